"""Pooled-text AdaLN conditioning: the mean real text state joins every timestep embedding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.interop.transformer import transformer_config_to_diffusers
from vqd_jax.transformer import Text2ImageTransformer, transformer_preset
from vqd_jax.transformer.layers import AdaLayerNorm
from vqd_jax.transformer.pooled_text import masked_mean


def test_masked_mean_averages_only_the_real_tokens():
  states = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 0, 1]], bool)
  expected = np.stack([states[b][mask[b]].mean(0) for b in range(3)])
  np.testing.assert_allclose(masked_mean(jnp.asarray(states), jnp.asarray(mask)), expected,
                             rtol=1e-6)
  np.testing.assert_allclose(masked_mean(jnp.asarray(states), None), states.mean(1), rtol=1e-6)


def test_adaln_condition_equals_shifting_the_timestep_embedding_row():
  """AdaLN(h, t, c) must be AdaLN(h, t) with the table row emb[t] replaced by emb[t] + c."""
  rng = np.random.default_rng(1)
  h = jnp.asarray(rng.standard_normal((2, 3, 8)), jnp.float32)
  t = jnp.asarray([4, 7])
  cond = jnp.asarray(rng.standard_normal((2, 8)), jnp.float32)
  norm = AdaLayerNorm(10)
  params = nn.meta.unbox(norm.init(jax.random.key(0), h, t))["params"]
  conditioned = norm.apply({"params": params}, h, t, cond)
  for b in range(2):
    table = params["emb"]["embedding"].at[t[b]].add(cond[b])
    shifted = {**params, "emb": {"embedding": table}}
    np.testing.assert_allclose(conditioned[b], norm.apply({"params": shifted}, h[b:b + 1],
                                                          t[b:b + 1])[0], rtol=1e-5, atol=1e-6)


def _inputs(fields):
  n = fields["height"] * fields["width"]
  rng = np.random.default_rng(2)
  x_t = jnp.asarray(rng.integers(0, fields["num_classes"] + 1, (2, n)))
  text = jnp.asarray(rng.standard_normal((2, 4, fields["cross_attention_dim"])), jnp.float32)
  mask = jnp.asarray([[True, True, True, False], [True, True, False, False]])
  return x_t, jnp.asarray([3, 50]), text, mask


@pytest.mark.parametrize("patch_size", [1, 2])
def test_zero_projection_is_the_model_without_it_and_only_real_tokens_count(patch_size):
  fields = transformer_preset("tiny", patch_size=patch_size)
  plain = Text2ImageTransformer(**fields)
  pooled = Text2ImageTransformer(**fields, pooled_text_adaln=True)
  x_t, t, text, mask = _inputs(fields)
  params = nn.meta.unbox(pooled.init(jax.random.key(0), x_t, t, text, mask))["params"]
  proj = params["pooled_text_embedding"]["proj"]
  assert proj["kernel"].shape == (fields["cross_attention_dim"],
                                  fields["num_heads"] * fields["head_dim"])
  assert not np.any(np.asarray(proj["kernel"])) and not np.any(np.asarray(proj["bias"]))
  without = {k: v for k, v in params.items() if k != "pooled_text_embedding"}
  np.testing.assert_allclose(pooled.apply({"params": params}, x_t, t, text, mask),
                             plain.apply({"params": without}, x_t, t, text, mask), atol=1e-6)

  # A trained projection makes the output depend on the caption through the AdaLNs as well...
  kernel = jax.random.normal(jax.random.key(3), proj["kernel"].shape)
  trained = {**params, "pooled_text_embedding": {"proj": {**proj, "kernel": kernel}}}
  out = pooled.apply({"params": trained}, x_t, t, text, mask)
  assert not np.allclose(out, plain.apply({"params": without}, x_t, t, text, mask), atol=1e-3)
  # ...but still not on padded text positions.
  padded = text.at[:, 3].set(100.0)
  np.testing.assert_allclose(pooled.apply({"params": trained}, x_t, t, padded, mask), out,
                             atol=1e-5)


def test_pooled_text_adaln_refuses_export():
  with pytest.raises(ValueError, match="pooled-text"):
    transformer_config_to_diffusers(transformer_preset("tiny", pooled_text_adaln=True))
