"""The learned 2-D relative position bias of the denoiser's self-attention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.interop.transformer import transformer_config_to_diffusers
from vqd_jax.transformer import Text2ImageTransformer, transformer_preset
from vqd_jax.transformer.relative_position import RelativePositionBias


def test_bias_reads_the_table_at_key_minus_query_offsets():
  heads, height, width = 3, 2, 4
  module = RelativePositionBias(heads, height, width)
  table = np.random.default_rng(0).standard_normal((heads, 2 * height - 1, 2 * width - 1))
  bias = np.asarray(module.apply({"params": {"table": jnp.asarray(table, jnp.float32)}}))
  assert bias.shape == (1, heads, height * width, height * width)
  for q in range(height * width):
    for k in range(height * width):
      (qy, qx), (ky, kx) = divmod(q, width), divmod(k, width)
      np.testing.assert_allclose(bias[0, :, q, k],
                                 table[:, ky - qy + height - 1, kx - qx + width - 1], rtol=1e-6)


def _model_and_inputs(**overrides):
  fields = transformer_preset("tiny", **overrides)
  n = fields["height"] * fields["width"]
  rng = np.random.default_rng(1)
  x_t = jnp.asarray(rng.integers(0, fields["num_classes"] + 1, (2, n)))
  text = jnp.asarray(rng.standard_normal((2, 3, fields["cross_attention_dim"])), jnp.float32)
  return fields, Text2ImageTransformer(**fields), (x_t, jnp.asarray([3, 50]), text)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_a_zero_table_is_the_model_without_the_bias_and_a_table_changes_it(patch_size):
  fields, plain, inputs = _model_and_inputs(patch_size=patch_size)
  _, biased, _ = _model_and_inputs(patch_size=patch_size, relative_position_bias=True)
  params = nn.meta.unbox(biased.init(jax.random.key(0), *inputs))["params"]
  tables = {k: v["attn1_relative_position"]["table"] for k, v in params.items()
            if k.startswith("transformer_blocks_")}
  grid = (fields["height"] // patch_size, fields["width"] // patch_size)
  assert len(tables) == fields["num_layers"]
  assert all(t.shape == (fields["num_heads"], 2 * grid[0] - 1, 2 * grid[1] - 1) and
             not np.any(np.asarray(t)) for t in tables.values())
  without = {k: ({n: p for n, p in v.items() if n != "attn1_relative_position"}
                 if k.startswith("transformer_blocks_") else v) for k, v in params.items()}
  np.testing.assert_allclose(np.asarray(biased.apply({"params": params}, *inputs)),
                             np.asarray(plain.apply({"params": without}, *inputs)), atol=1e-6)
  bumped = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 1.0 if "attn1_relative_position" in jax.tree_util.keystr(path) and
      "blocks_0" in jax.tree_util.keystr(path) else x, params)
  # A constant shift of every logit changes nothing (softmax); a ramp along x does.
  np.testing.assert_allclose(np.asarray(biased.apply({"params": bumped}, *inputs)),
                             np.asarray(plain.apply({"params": without}, *inputs)), atol=1e-5)
  ramp = jax.tree_util.tree_map_with_path(
      lambda path, x: x + jnp.arange(x.shape[-1], dtype=x.dtype)
      if "attn1_relative_position" in jax.tree_util.keystr(path) else x, params)
  assert not np.allclose(np.asarray(biased.apply({"params": ramp}, *inputs)),
                         np.asarray(plain.apply({"params": without}, *inputs)), atol=1e-3)


def test_the_bias_refuses_export():
  with pytest.raises(ValueError, match="relative position bias"):
    transformer_config_to_diffusers(transformer_preset("tiny", relative_position_bias=True))
