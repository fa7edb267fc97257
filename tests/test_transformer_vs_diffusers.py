"""Text2ImageTransformer against diffusers' Transformer2DModel (VQ-Diffusion vectorized path)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.interop.state_dict import load_state_dict
from vqd_jax.interop.transformer import (load_diffusers_transformer, params_from_diffusers,
                                         params_to_diffusers, transformer_config_from_diffusers)
from vqd_jax.transformer import Text2ImageTransformer, abstract_params

torch = pytest.importorskip("torch", reason="the reference test runs diffusers (PyTorch)")
diffusers = pytest.importorskip("diffusers", reason="the reference test compares against diffusers")

pytestmark = pytest.mark.reference

K, SIDE, HEADS, HEAD_DIM, CROSS, STEPS, LAYERS = 16, 4, 2, 8, 12, 10, 2
BATCH, TEXT_LEN = 3, 5


def _tiny_diffusers_model(seed=0):
  torch.manual_seed(seed)
  model = diffusers.Transformer2DModel(
      num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, num_layers=LAYERS,
      num_vector_embeds=K + 1, sample_size=SIDE, num_embeds_ada_norm=STEPS,
      activation_fn="geglu-approximate", attention_bias=True, cross_attention_dim=CROSS,
      norm_type="ada_norm")
  # Default init leaves LayerNorms at ones/zeros and would hide a swapped scale/bias: randomise all.
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.3)
  return model.eval()


def _inputs(seed=1):
  rng = np.random.default_rng(seed)
  x_t = rng.integers(0, K + 1, size=(BATCH, SIDE * SIDE)).astype(np.int32)  # includes [MASK] = K
  text = rng.normal(size=(BATCH, TEXT_LEN, CROSS)).astype(np.float32)
  return x_t, text


def _run_diffusers(model, x_t, t, text):
  with torch.no_grad():
    out = model(hidden_states=torch.from_numpy(x_t).long(), timestep=torch.tensor(t),
                encoder_hidden_states=torch.from_numpy(text)).sample
  return out.permute(0, 2, 1).numpy()  # [B, K, N] -> [B, N, K]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  model = _tiny_diffusers_model()
  folder = tmp_path_factory.mktemp("transformer")
  model.save_pretrained(folder, safe_serialization=True)
  fields, params = load_diffusers_transformer(folder)
  return model, folder, fields, params


def test_config_conversion(converted):
  _, folder, fields, _ = converted
  assert fields == dict(num_classes=K, height=SIDE, width=SIDE, num_layers=LAYERS, num_heads=HEADS,
                        head_dim=HEAD_DIM, cross_attention_dim=CROSS, num_embeds_ada_norm=STEPS,
                        mlp_ratio=4, dropout=0.0)
  with open(folder / "config.json", encoding="utf-8") as f:
    assert transformer_config_from_diffusers(json.load(f)) == fields


def test_log_probs_match_diffusers(converted):
  model, _, fields, params = converted
  x_t, text = _inputs()
  ours_model = Text2ImageTransformer(**fields)
  for t in (0, 7):
    theirs = _run_diffusers(model, x_t, t, text)
    ours = np.asarray(ours_model.apply({"params": params}, jnp.asarray(x_t),
                                       jnp.full((BATCH,), t, jnp.int32), jnp.asarray(text)))
    assert ours.shape == (BATCH, SIDE * SIDE, K) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_mask_buffers_are_ignored(converted):
  _, folder, fields, params = converted
  state = load_state_dict(folder)
  state["transformer_blocks.0.attn2.mask"] = np.tril(np.ones((1, 1, 16, 16), np.float32))
  again = params_from_diffusers(state, abstract_params(fields))
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_export_round_trip_is_exact(converted):
  model, _, _, params = converted
  exported = params_to_diffusers(params)
  fresh = _tiny_diffusers_model(seed=123)
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
  x_t, text = _inputs(seed=2)
  original = _run_diffusers(model, x_t, 3, text)
  reloaded = _run_diffusers(fresh, x_t, 3, text)
  np.testing.assert_array_equal(original, reloaded)
