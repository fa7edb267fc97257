"""The denoiser's global_cond input: a zero-initialised projection added to every AdaLN's timestep
embedding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.interop.transformer import transformer_config_to_diffusers
from vqd_jax.layers import AdaLayerNorm
from vqd_jax.transformer import Text2ImageTransformer, transformer_preset

G = 3  # global_cond_dim


def _inputs(fields):
  n = fields["height"] * fields["width"]
  rng = np.random.default_rng(2)
  x_t = jnp.asarray(rng.integers(0, fields["num_classes"] + 1, (2, n)))
  text = jnp.asarray(rng.standard_normal((2, 4, fields["cross_attention_dim"])), jnp.float32)
  mask = jnp.asarray([[True, True, True, False], [True, True, False, False]])
  g = jnp.asarray(rng.standard_normal((2, G)), jnp.float32)
  return x_t, jnp.asarray([3, 50]), text, mask, g


@pytest.mark.parametrize("patch_size", [1, 2])
def test_zero_initialised_projection_is_the_model_without_it(patch_size):
  fields = transformer_preset("tiny", patch_size=patch_size)
  plain = Text2ImageTransformer(**fields)
  conditioned = Text2ImageTransformer(**fields, global_cond_dim=G)
  x_t, t, text, mask, g = _inputs(fields)
  params = nn.meta.unbox(conditioned.init(jax.random.key(0), x_t, t, text, mask,
                                          global_cond=g))["params"]
  proj = params["global_cond_proj"]
  assert proj["kernel"].shape == (G, fields["num_heads"] * fields["head_dim"])
  assert not np.any(np.asarray(proj["kernel"])) and not np.any(np.asarray(proj["bias"]))
  without = {k: v for k, v in params.items() if k != "global_cond_proj"}
  expected = plain.apply({"params": without}, x_t, t, text, mask)
  np.testing.assert_array_equal(conditioned.apply({"params": params}, x_t, t, text, mask,
                                                  global_cond=g), expected)
  # No global_cond reads as zeros.
  np.testing.assert_array_equal(conditioned.apply({"params": params}, x_t, t, text, mask),
                                expected)


def _layer_norm(h):
  mean = h.mean(-1, keepdims=True)
  return (h - mean) / np.sqrt(((h - mean) ** 2).mean(-1, keepdims=True) + 1e-5)


def test_adaln_scale_and_shift_follow_the_closed_form():
  """With a hand-set projection (P, c), every AdaLN computes, in float64 numpy,
  temb = emb[t] + g·P + c; [scale, shift] = silu(temb)·W + b; LN(h)·(1 + scale) + shift."""
  fields = transformer_preset("tiny")
  model = Text2ImageTransformer(**fields, global_cond_dim=G)
  x_t, t, text, mask, g = _inputs(fields)
  params = nn.meta.unbox(model.init(jax.random.key(0), x_t, t, text, mask,
                                    global_cond=g))["params"]
  rng = np.random.default_rng(5)
  width = fields["num_heads"] * fields["head_dim"]
  kernel, bias = rng.standard_normal((G, width)), rng.standard_normal(width)
  params = {**params, "global_cond_proj": {"kernel": jnp.asarray(kernel, jnp.float32),
                                           "bias": jnp.asarray(bias, jnp.float32)}}
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, AdaLayerNorm) and context.method_name == "__call__":
      calls.append((context.module.scope.path, args, out))
    return out

  with nn.intercept_methods(record):
    out = model.apply({"params": params}, x_t, t, text, mask, global_cond=g)
  assert len(calls) == 2 * fields["num_layers"]
  cond = np.asarray(g, np.float64) @ kernel + bias
  for path, (h, step, passed_cond), got in calls:
    np.testing.assert_allclose(passed_cond, cond, rtol=1e-5, atol=1e-5)
    p = params
    for name in path:
      p = p[name]
    table = np.asarray(p["emb"]["embedding"], np.float64)
    temb = table[np.asarray(step)] + cond
    silu = temb / (1 + np.exp(-temb))
    scale_shift = silu @ np.asarray(p["linear"]["kernel"], np.float64) + \
        np.asarray(p["linear"]["bias"], np.float64)
    scale, shift = scale_shift[:, None, :width], scale_shift[:, None, width:]
    expected = _layer_norm(np.asarray(h, np.float64)) * (1 + scale) + shift
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  # The conditioning now changes the prediction, and remat computes the same thing.
  without = Text2ImageTransformer(**fields).apply(
      {"params": {k: v for k, v in params.items() if k != "global_cond_proj"}}, x_t, t, text, mask)
  assert not np.allclose(out, without, atol=1e-3)
  remat = Text2ImageTransformer(**fields, global_cond_dim=G, remat=True)
  np.testing.assert_allclose(remat.apply({"params": params}, x_t, t, text, mask, global_cond=g),
                             out, atol=1e-5)


def test_global_cond_is_checked_and_refuses_export():
  fields = transformer_preset("tiny")
  x_t, t, text, mask, g = _inputs(fields)
  with pytest.raises(ValueError, match="global_cond_dim=0"):
    Text2ImageTransformer(**fields).init(jax.random.key(0), x_t, t, text, mask, global_cond=g)
  with pytest.raises(ValueError, match=r"global_cond must be \[2, 4\]"):
    Text2ImageTransformer(**fields, global_cond_dim=4).init(jax.random.key(0), x_t, t, text, mask,
                                                            global_cond=g)
  with pytest.raises(ValueError, match="global_cond_dim"):
    transformer_config_to_diffusers(dict(fields, global_cond_dim=G))
