"""A tiny random diffusers ``VQModel`` loaded into vqd_jax gives the same latents, codes and images."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.interop import state_dict as sd_lib
from vqd_jax.interop import vqvae as vq_interop

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def saved_vqmodel(tmp_path_factory):
  torch = pytest.importorskip("torch", reason="the reference is the PyTorch diffusers VQModel")
  diffusers = pytest.importorskip("diffusers", reason="the reference is diffusers' VQModel")
  torch.manual_seed(0)
  model = diffusers.VQModel(
      in_channels=3, out_channels=3, block_out_channels=(16, 32, 32), layers_per_block=1,
      down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
      up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
      latent_channels=8, vq_embed_dim=4, num_vq_embeddings=24, norm_num_groups=8,
      sample_size=16).eval()
  with torch.no_grad():  # random non-trivial norms and biases, so every parameter matters
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  path = tmp_path_factory.mktemp("vqvae")
  model.save_pretrained(str(path), safe_serialization=True)
  return torch, model, path


def test_encode_and_decode_match_diffusers(saved_vqmodel):
  torch, ref, path = saved_vqmodel
  model, params = vq_interop.load_diffusers_vqvae(path)
  assert model.down_attention == (False, False, True) and model.up_attention == (True, False, False)
  x = np.random.RandomState(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    h = ref.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latents
    _, _, (_, _, ref_idx) = ref.quantize(h)
    ref_img = ref.decode(h).sample.permute(0, 2, 3, 1).numpy()
  ref_latents = h.permute(0, 2, 3, 1).numpy()
  ref_idx = ref_idx.numpy().reshape(2, 4, 4)

  latents, idx, _ = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))(
      params, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(latents), ref_latents, atol=1e-3)
  np.testing.assert_array_equal(np.asarray(idx), ref_idx)
  img = jax.jit(lambda p, i: model.apply({"params": p}, i, method="decode_indices"))(
      params, jnp.asarray(ref_idx))
  np.testing.assert_allclose(np.asarray(img), ref_img, atol=1e-3)


def test_legacy_attention_names_and_export_round_trip(saved_vqmodel):
  _, _, path = saved_vqmodel
  model, params = vq_interop.load_diffusers_vqvae(path)
  state = sd_lib.load_state_dict(path)
  legacy = {k.replace("to_q.", "query.").replace("to_k.", "key.").replace("to_v.", "value.")
            .replace("to_out.0.", "proj_attn."): v for k, v in state.items()}
  assert any(".proj_attn." in k for k in legacy)
  from_legacy = vq_interop.params_from_diffusers(legacy, params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               from_legacy, params)
  exported = vq_interop.params_to_diffusers(params)
  assert set(exported) == set(state)
  for k, v in state.items():
    np.testing.assert_array_equal(exported[k], v)
  del model


def test_config_mapping_and_unsupported_options(saved_vqmodel):
  _, _, path = saved_vqmodel
  with open(path / "config.json", encoding="utf-8") as f:
    config = json.load(f)
  kwargs = vq_interop.config_from_diffusers(config)
  assert kwargs["block_out_channels"] == (16, 32, 32) and kwargs["num_vq_embeddings"] == 24
  assert kwargs["vq_embed_dim"] == 4 and kwargs["latent_channels"] == 8
  with pytest.raises(ValueError, match="spatial norm"):
    vq_interop.config_from_diffusers(dict(config, norm_type="spatial"))
  with pytest.raises(ValueError, match="down_block_types"):
    vq_interop.config_from_diffusers(dict(config, down_block_types=["SkipDownBlock2D"] * 3))
