"""vqd_jax.layers.Attention against a brute-force float64 numpy attention, the blocked path against
the plain one, and key-value-cache decoding against the full causal forward."""

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.layers import (DIFFUSERS_PROJECTIONS, HF_PROJECTIONS, Attention, blocked_attention,
                            dot_product_attention)
from vqd_jax.layers import attention as attention_lib

B, N, L, H, DH, D, DC = 2, 5, 4, 2, 3, 6, 7


def _random_params(module, *args, seed=0, **kwargs):
  """Every parameter (biases included) drawn from N(0, 0.5²) with numpy."""
  shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *args, **kwargs))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), jnp.float32),
                      shapes)


def _reference(params, x, context=None, key_mask=None, bias=None, causal=False,
               names=DIFFUSERS_PROJECTIONS):
  """Attention one query row at a time in float64: softmax over the visible keys only, zeros for a
  row that sees no key."""
  p = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in params.items()}
  x = np.asarray(x, np.float64)
  ctx = x if context is None else np.asarray(context, np.float64)
  lin = lambda name, y: y @ p[name]["kernel"] + p[name]["bias"]
  split = lambda y: y.reshape(y.shape[:2] + (H, DH))
  q, k, v = split(lin(names[0], x)), split(lin(names[1], ctx)), split(lin(names[2], ctx))
  nq, nk = x.shape[1], ctx.shape[1]
  bias = np.zeros((1, 1, nq, nk)) if bias is None else np.asarray(bias, np.float64)
  out = np.zeros((x.shape[0], nq, H, DH))
  for b in range(x.shape[0]):
    for h in range(H):
      for i in range(nq):
        visible = np.ones(nk, bool)
        if key_mask is not None:
          visible &= np.asarray(key_mask[b], bool)
        if causal:
          visible &= np.arange(nk) <= i
        if not visible.any():
          continue
        logits = q[b, i, h] @ k[b, :, h].T / np.sqrt(DH)
        logits = logits + np.broadcast_to(bias, (x.shape[0], H, nq, nk))[b, h, i]
        w = np.exp(logits[visible] - logits[visible].max())
        out[b, i, h] = (w / w.sum()) @ v[b, visible, h]
  return lin(names[3], out.reshape(x.shape[0], nq, H * DH))


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((B, N, D)), jnp.float32)
  ctx = jnp.asarray(rng.standard_normal((B, L, DC)), jnp.float32)
  bias = jnp.asarray(rng.standard_normal((1, H, N, L)), jnp.float32)
  self_bias = jnp.asarray(rng.standard_normal((B, 1, N, N)), jnp.float32)
  return x, ctx, bias, self_bias


def test_cross_attention_with_padding_mask_and_bias(inputs):
  x, ctx, bias, _ = inputs
  module = Attention(H, DH, kv_axis="text_embed")
  params = _random_params(module, x, ctx)
  # Row 1 sees no key at all: its attention output is zero, so only the output bias remains.
  key_mask = jnp.asarray([[True, False, True, False], [False, False, False, False]])
  out = module.apply({"params": params}, x, ctx, key_mask=key_mask, bias=bias)
  np.testing.assert_allclose(out, _reference(params, x, ctx, key_mask, bias), atol=2e-5)
  np.testing.assert_allclose(out[1], np.broadcast_to(params["to_out_0"]["bias"], (N, D)),
                             atol=1e-6)
  assert not np.isnan(np.asarray(out)).any()


def test_self_attention_plain_and_with_bias(inputs):
  x, _, _, self_bias = inputs
  module = Attention(H, DH)
  params = _random_params(module, x, seed=2)
  np.testing.assert_allclose(module.apply({"params": params}, x), _reference(params, x),
                             atol=2e-5)
  np.testing.assert_allclose(module.apply({"params": params}, x, bias=self_bias),
                             _reference(params, x, bias=self_bias), atol=2e-5)


def test_causal_with_padding_and_hf_names(inputs):
  x, _, _, _ = inputs
  module = Attention(H, DH, causal=True, projection_names=HF_PROJECTIONS)
  params = _random_params(module, x, seed=3)
  assert set(params) == set(HF_PROJECTIONS)
  key_mask = jnp.asarray([[True] * N, [True, True, True, False, False]])
  out = module.apply({"params": params}, x, key_mask=key_mask)
  np.testing.assert_allclose(out, _reference(params, x, key_mask=key_mask, causal=True,
                                             names=HF_PROJECTIONS), atol=2e-5)
  # Changing a later position leaves every earlier output unchanged.
  changed = module.apply({"params": params}, x.at[:, 3].add(5.0), key_mask=key_mask)
  np.testing.assert_array_equal(changed[:, :3], out[:, :3])
  with pytest.raises(ValueError, match="self-attention"):
    module.apply({"params": params}, x, x)


def test_parameter_layout_and_logical_axes(inputs):
  x, ctx, _, _ = inputs
  boxed = Attention(H, DH, kv_axis="text_embed").init(jax.random.key(0), x, ctx)["params"]
  names = {k: v["kernel"].names for k, v in boxed.items()}
  assert names == {"to_q": ("embed", "heads"), "to_k": ("text_embed", "heads"),
                   "to_v": ("text_embed", "heads"), "to_out_0": ("heads", "embed")}
  assert boxed["to_k"]["kernel"].value.shape == (DC, H * DH)
  assert boxed["to_out_0"]["bias"].names == ("embed",)
  # N(0, 0.02) kernels and zero biases by default.
  assert 0.005 < float(jnp.std(boxed["to_q"]["kernel"].value)) < 0.05
  assert not np.any(np.asarray(boxed["to_q"]["bias"].value))


def test_blocked_path_equals_the_plain_path():
  rng = np.random.default_rng(4)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 512, 2, 8)), jnp.float32) for _ in range(3))
  # An all-true key mask forces the materialised softmax.
  plain = dot_product_attention(q, k, v, key_mask=jnp.ones((2, 512), bool))
  for key_block, query_block in ((128, 256), (64, 128), (512, 512)):
    np.testing.assert_allclose(blocked_attention(q, k, v, key_block, query_block), plain,
                               atol=2e-5)
  # The dispatcher only blocks on CPU, without masks or bias, over long divisible sequences.
  on_cpu = jax.default_backend() == "cpu"
  use = attention_lib._use_blocked  # pylint: disable=protected-access
  assert use(q, k, None, None) == on_cpu
  assert not use(q, k, jnp.ones((2, 512), bool), None)
  assert not use(q, k, None, jnp.zeros((1, 1, 512, 512)))
  assert not use(q, k, None, None, jnp.ones((1, 1, 512, 512), bool))
  assert not use(q[:, :100], k[:, :100], None, None)


def test_long_self_attention_module_matches_the_reference():
  """Through the module on CPU the 512-position self-attention takes the blocked path."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((1, 512, D)), jnp.float32)
  module = Attention(H, DH)
  params = _random_params(module, x, seed=5)
  out = module.apply({"params": params}, x)
  q = np.asarray(x, np.float64) @ np.asarray(params["to_q"]["kernel"], np.float64) + \
      np.asarray(params["to_q"]["bias"], np.float64)
  k = np.asarray(x, np.float64) @ np.asarray(params["to_k"]["kernel"], np.float64) + \
      np.asarray(params["to_k"]["bias"], np.float64)
  v = np.asarray(x, np.float64) @ np.asarray(params["to_v"]["kernel"], np.float64) + \
      np.asarray(params["to_v"]["bias"], np.float64)
  heads = lambda y: y.reshape(512, H, DH).transpose(1, 0, 2)
  logits = np.einsum("hqd,hkd->hqk", heads(q), heads(k)) / np.sqrt(DH)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  o = np.einsum("hqk,hkd->qhd", w / w.sum(-1, keepdims=True), heads(v)).reshape(1, 512, H * DH)
  expected = o @ np.asarray(params["to_out_0"]["kernel"], np.float64) + \
      np.asarray(params["to_out_0"]["bias"], np.float64)
  np.testing.assert_allclose(out, expected, atol=5e-5)


@pytest.mark.parametrize("padded", [False, True])
def test_cached_decoding_equals_the_full_causal_forward(inputs, padded):
  x, _, _, _ = inputs
  full = Attention(H, DH, causal=True)
  params = _random_params(full, x, seed=6)
  key_mask = jnp.asarray([[True] * N, [True, True, True, False, False]]) if padded else None
  expected = full.apply({"params": params}, x, key_mask=key_mask)

  decoder = full.clone(decode=True)
  # The initialising call sizes the cache from a full-length input; only its shape matters.
  cache = decoder.init(jax.random.key(0), jnp.zeros_like(x))["cache"]
  assert cache["cached_key"].shape == (B, N, H, DH) and int(cache["cache_index"]) == 0
  step = jax.jit(lambda cache, xi: decoder.apply({"params": params, "cache": cache}, xi,
                                                 key_mask=key_mask, mutable=["cache"]))
  for i in range(N):
    out, mutated = step(cache, x[:, i:i + 1])
    cache = mutated["cache"]
    np.testing.assert_allclose(out[:, 0], expected[:, i], atol=1e-6)
  assert int(cache["cache_index"]) == N
  # The cache holds the keys the full forward computes.
  keys = x @ params["to_k"]["kernel"] + params["to_k"]["bias"]
  np.testing.assert_allclose(cache["cached_key"], keys.reshape(B, N, H, DH), atol=1e-6)
  with pytest.raises(ValueError, match="one position"):
    decoder.apply({"params": params, "cache": cache}, x[:, :2], mutable=["cache"])


def test_attention_fn_replaces_the_kernel(inputs):
  """The autoencoder's single-head kernel plugs in and agrees with the shared one."""
  from vqd_jax.vqvae.layers import single_head_attention  # pylint: disable=import-outside-toplevel
  x, _, _, _ = inputs
  shared = Attention(1, D)
  params = _random_params(shared, x, seed=7)
  own = shared.clone(attention_fn=single_head_attention)
  np.testing.assert_allclose(own.apply({"params": params}, x), shared.apply({"params": params}, x),
                             atol=1e-5)
  flat = flax.traverse_util.flatten_dict(params)
  assert all(path[0] in DIFFUSERS_PROJECTIONS for path in flat)
  with pytest.raises(ValueError, match="no masks"):
    own.apply({"params": params}, x, key_mask=jnp.ones((B, N), bool))
