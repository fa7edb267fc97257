"""diffusers config/state-dict conversion without PyTorch (the numeric check is in *_vs_diffusers)."""

import jax
import numpy as np
import pytest

from vqd_jax.interop.transformer import (DIFFUSERS_FIELDS, params_from_diffusers,
                                         params_to_diffusers, transformer_config_from_diffusers,
                                         transformer_config_to_diffusers)
from vqd_jax.transformer import Text2ImageTransformer, abstract_params, transformer_preset
from vqd_jax.transformer import fields as transformer_fields

# microsoft/vq-diffusion-ithq transformer/config.json as published (vq-diffusion-reference.md §4.4).
ITHQ_CONFIG = {
    "_class_name": "Transformer2DModel", "activation_fn": "geglu-approximate",
    "attention_bias": True, "attention_head_dim": 88, "cross_attention_dim": 512, "dropout": 0.0,
    "in_channels": None, "norm_num_groups": 32, "num_attention_heads": 16,
    "num_embeds_ada_norm": 100, "num_layers": 36, "num_vector_embeds": 4097, "sample_size": 32,
}


def test_ithq_config_is_the_ithq_preset():
  assert transformer_config_from_diffusers(ITHQ_CONFIG) == transformer_preset("ithq")


def test_config_export_round_trips():
  fields = transformer_preset("B")
  assert transformer_config_from_diffusers(transformer_config_to_diffusers(fields)) == fields


def test_keys_and_shapes_follow_the_hub_layout():
  # tiny: K=16, 4x4 tokens, 2 layers, width 2 heads x 16 = 32, text 24, 100 timesteps.
  fields = transformer_preset("tiny")
  template = abstract_params(fields)
  state = params_to_diffusers(jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), template))
  # embeddings; per block norm1 3 + attn1 8 + norm2 3 + attn2 8 + norm3 2 + ff 4; norm_out + out
  assert len(state) == 3 + 2 * 28 + 4
  expected = {  # torch layouts, as in vq-diffusion-reference.md §4.4 for ITHQ
      "latent_image_embedding.emb.weight": (17, 32),
      "latent_image_embedding.height_emb.weight": (4, 32),
      "latent_image_embedding.width_emb.weight": (4, 32),
      "transformer_blocks.0.norm1.emb.weight": (100, 32),
      "transformer_blocks.0.norm1.linear.weight": (64, 32),
      "transformer_blocks.0.norm2.linear.bias": (64,),
      "transformer_blocks.1.attn2.to_k.weight": (32, 24),
      "transformer_blocks.1.attn1.to_out.0.bias": (32,),
      "transformer_blocks.1.ff.net.0.proj.weight": (128, 32),
      "transformer_blocks.1.ff.net.2.weight": (32, 128),
      "transformer_blocks.1.norm3.weight": (32,),
      "norm_out.bias": (32,),
      "out.weight": (16, 32),
  }
  for key, shape in expected.items():
    assert state[key].shape == shape, key


def test_state_dict_round_trip_and_mask_buffer():
  fields = transformer_preset("tiny")
  template = abstract_params(fields)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda x: rng.standard_normal(x.shape).astype(np.float32), template)
  state = params_to_diffusers(params)
  # torch Linear weights are [out, in]: Dense kernels must come out transposed.
  np.testing.assert_array_equal(state["out.weight"], params["out"]["kernel"].T)
  state["transformer_blocks.1.attn2.mask"] = np.ones((1, 1, 16, 16), np.float32)  # official buffer
  again = params_from_diffusers(state, template)
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_conversion_errors_name_the_problem():
  with pytest.raises(ValueError, match="num_vector_embeds"):
    transformer_config_from_diffusers({**ITHQ_CONFIG, "num_vector_embeds": None})
  with pytest.raises(ValueError, match="geglu-approximate"):
    transformer_config_from_diffusers({**ITHQ_CONFIG, "activation_fn": "geglu"})
  with pytest.raises(ValueError, match="AdaLN"):
    transformer_config_from_diffusers({**ITHQ_CONFIG, "norm_type": "ada_norm_zero"})
  template = abstract_params(transformer_preset("tiny"))
  state = params_to_diffusers(jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), template))
  del state["transformer_blocks.0.norm2.emb.weight"]
  with pytest.raises(ValueError, match="transformer_blocks_0/norm2/emb/embedding"):
    params_from_diffusers(state, template)
  with pytest.raises(TypeError, match="concrete arrays"):
    params_to_diffusers(template)


def test_architecture_fields_come_from_the_dataclass():
  names = transformer_fields.architecture_fields()
  assert not set(names) & {"dtype", "param_dtype", "remat", "parent", "name"}
  assert set(names) | set(transformer_fields.RUN_OPTIONS) == set(transformer_fields.module_fields())
  model = Text2ImageTransformer(**transformer_preset("tiny", patch_size=2), remat=True)
  rebuilt = Text2ImageTransformer(**transformer_fields.architecture(model))
  assert transformer_fields.architecture(rebuilt) == transformer_fields.architecture(model)
  assert rebuilt.patch_size == 2 and rebuilt.remat is False


def test_every_field_diffusers_lacks_refuses_export_away_from_its_default():
  """The refusals follow the dataclass defaults: a new model option needs no list updated."""
  base = transformer_preset("tiny", position_init="sincos")  # initialisation only: exports
  transformer_config_to_diffusers(base)
  checked = []
  for field, default in transformer_fields.architecture_defaults().items():
    if field in DIFFUSERS_FIELDS or field in transformer_fields.INIT_ONLY:
      continue
    other = (not default if isinstance(default, bool) else
             default + 1 if isinstance(default, (int, float)) else f"{default}_other")
    with pytest.raises(ValueError, match=f"{field}={other!r} cannot be exported"):
      transformer_config_to_diffusers(dict(base, **{field: other}))
    checked.append(field)
  assert {"mlp_ratio", "mlp_type", "patch_size", "relative_position_bias"} <= set(checked)
