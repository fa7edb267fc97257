"""The autoregressive token model: causality, the key-value cache against full recomputation,
sampling statistics against a known Markov chain, and the logit filters against numpy."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.autoregressive import (ARGenerator, ARSamplerConfig, ARTransformer, decoder_context,
                                    filter_logits, sample_autoregressive)
from vqd_jax.text.conditioner import Conditioning
from vqd_jax.transformer import Text2ImageTransformer

K, H, W, L, DT = 12, 3, 4, 5, 8


def _model(**kw) -> ARTransformer:
  return ARTransformer(**{**dict(num_classes=K, height=H, width=W, num_layers=2, num_heads=2,
                                 head_dim=8, cross_attention_dim=DT), **kw})


def _inputs(seed=0, batch=3):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.integers(0, K, (batch, H * W)), jnp.int32)
  states = jnp.asarray(rng.standard_normal((batch, L, DT)), jnp.float32)
  mask = jnp.asarray(np.arange(L)[None] < rng.integers(2, L + 1, (batch, 1)))
  return x, states, mask


def _params(model, x, states, mask, scale=8.0):
  """Random parameters with matrices scaled up, so that outputs depend visibly on the inputs."""
  params = model.init(jax.random.key(0), x, states, mask)["params"]
  return jax.tree.map(lambda p: p * scale if p.ndim > 1 else p, params)


def test_outputs_never_see_the_current_or_later_tokens():
  model = _model()
  x, states, mask = _inputs()
  params = _params(model, x, states, mask)
  base = np.asarray(model.apply({"params": params}, x, states, mask))
  for i in (0, 5, H * W - 1):
    changed = x.at[:, i].set((x[:, i] + 1) % K)
    out = np.asarray(model.apply({"params": params}, changed, states, mask))
    np.testing.assert_array_equal(out[:, :i + 1], base[:, :i + 1])
    if i < H * W - 1:  # ...and the next position does see it
      assert np.abs(out[:, i + 1] - base[:, i + 1]).max() > 1e-3


def test_cached_decoding_equals_full_recomputation():
  model = _model()
  x, states, mask = _inputs(1)
  params = _params(model, x, states, mask)
  full = np.asarray(model.apply({"params": params}, x, states, mask))
  decoder = model.clone(decode=True)
  cache = decoder.init(jax.random.key(0), x, states, mask)["cache"]
  empty = jax.tree.map(jnp.zeros_like, cache)
  # The text's keys and values projected once, or again at every step: the same logits.
  for context in (decoder_context(model, params, states), None):
    cache = empty
    previous = jnp.full((x.shape[0], 1), model.start_token, jnp.int32)
    for n in range(H * W):
      log_p, variables = decoder.apply({"params": params, "cache": cache}, previous, states,
                                       mask, position=n, context_kv=context, mutable=["cache"])
      cache = variables["cache"]
      np.testing.assert_allclose(log_p[:, 0], full[:, n], atol=1e-5)
      previous = x[:, n:n + 1]


@pytest.mark.parametrize("settings", [
    ARSamplerConfig(),
    ARSamplerConfig(guidance_scale=3.0, temperature=0.7, top_k=5, top_p=0.8)])
def test_cached_and_uncached_samples_are_identical(settings):
  model = _model()
  x, states, mask = _inputs(2)
  params = _params(model, x, states, mask)
  gen = ARGenerator(model)
  cond, null = Conditioning(states, mask), Conditioning(jnp.zeros_like(states))
  draw = jax.jit(lambda s, k: gen.generate_tokens(params, cond, k, s, null=null),
                 static_argnums=0)
  uncached = dataclasses.replace(settings, use_cache=False)
  for seed in range(3):
    a, b = draw(settings, jax.random.key(seed)), draw(uncached, jax.random.key(seed))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, H * W) and a.min() >= 0 and a.max() < K
  with pytest.raises(ValueError, match="needs the null"):
    gen.generate_tokens(params, cond, jax.random.key(0), ARSamplerConfig(guidance_scale=2.0))


def _chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
  expected = counts.sum() * probs
  keep = expected > 0
  assert counts[~keep].sum() == 0, "a code with probability 0 was drawn"
  return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


@pytest.mark.parametrize("settings", [ARSamplerConfig(), ARSamplerConfig(temperature=0.5),
                                      ARSamplerConfig(top_k=2), ARSamplerConfig(top_p=0.6)])
def test_sampled_markov_chain_matches_its_analytic_marginals(settings):
  """x_0 ~ π, x_n ~ T[x_{n-1}]: the empirical marginals of x_n match π T^n after filtering."""
  rng = np.random.default_rng(3)
  k, n_tokens, batch = 4, 3, 20_000
  start = rng.dirichlet(np.ones(k))
  trans = rng.dirichlet(np.ones(k), size=k)

  def next_log_probs(carry, tokens, n):
    prev = jnp.take(tokens, jnp.maximum(n - 1, 0), axis=1)
    table = jnp.log(jnp.asarray(trans, jnp.float32))[prev]
    first = jnp.broadcast_to(jnp.log(jnp.asarray(start, jnp.float32)), table.shape)
    return jnp.where(n == 0, first, table), carry

  tokens = np.asarray(jax.jit(lambda key: sample_autoregressive(
      next_log_probs, (), key, batch_size=batch, num_tokens=n_tokens, start_token=k,
      settings=settings))(jax.random.key(0)))

  def filtered(p):  # numpy: the filtered distribution of one row
    return _softmax(_np_filter(np.log(p), settings.temperature, settings.top_k, settings.top_p))

  marginal = filtered(start)
  step = np.stack([filtered(row) for row in trans])
  # chi-square with k - 1 = 3 degrees of freedom: P(X > 22.1) = 6e-5, per position.
  for n in range(n_tokens):
    counts = np.bincount(tokens[:, n], minlength=k)
    assert _chi_square(counts, marginal) < 22.1, (n, counts, marginal)
    marginal = marginal @ step


def _softmax(z):
  z = np.where(np.isfinite(z), z, -np.inf)
  e = np.exp(z - z.max())
  return e / e.sum()


def _np_filter(logits, temperature, top_k, top_p):
  """One row: temperature, then keep the top k (ties kept), then the smallest nucleus >= p."""
  z = np.asarray(logits, np.float64) / temperature
  if top_k and top_k < z.size:
    z = np.where(z < np.sort(z)[::-1][top_k - 1], -np.inf, z)
  if top_p < 1:
    order = np.argsort(-z, kind="stable")
    probs = _softmax(z)[order]
    kept, mass = [], 0.0
    for code, p in zip(order, probs):
      if mass >= top_p:
        break
      kept.append(code)
      mass += p
    threshold = min(z[kept])
    z = np.where(z < threshold, -np.inf, z)
  return z


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.5), (2.0, 5, 0.9), (1.0, 1, 1.0),
    (1.0, 0, 1e-6)])
def test_filter_logits_matches_numpy(temperature, top_k, top_p):
  logits = np.random.default_rng(4).standard_normal((6, 10)).astype(np.float32) * 2
  got = np.asarray(filter_logits(jnp.asarray(logits), temperature, top_k, top_p))
  for row, out in zip(logits, got):
    want = _np_filter(row, temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isinf(out), np.isinf(want))
    np.testing.assert_allclose(out[np.isfinite(out)], want[np.isfinite(want)], rtol=1e-6)


def test_parameters_match_the_denoiser_up_to_the_timestep_modulation():
  sizes = dict(num_classes=K, height=H, width=W, num_layers=3, num_heads=2, head_dim=8,
               cross_attention_dim=DT)
  x, states, mask = _inputs()
  count = lambda tree: sum(math.prod(p.shape) for p in jax.tree.leaves(tree))
  ar = count(ARTransformer(**sizes).init(jax.random.key(0), x, states, mask)["params"])
  steps = 100
  denoiser = Text2ImageTransformer(**sizes, num_embeds_ada_norm=steps, position_init="sincos")
  dn = count(denoiser.init(jax.random.key(0), x, jnp.zeros(3, jnp.int32), states)["params"])
  d = 2 * 8
  # Per block, two AdaLNs (table [T, d], Linear d -> 2d) replace two affine LayerNorms (2d each).
  adaln, layer_norm = steps * d + d * 2 * d + 2 * d, 2 * d
  assert dn - ar == 3 * 2 * (adaln - layer_norm)


def test_bad_settings_and_inputs_are_explained():
  for kw, message in [(dict(temperature=0.0), "temperature"), (dict(top_k=-1), "top_k"),
                      (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
                      (dict(guidance_scale=float("nan")), "guidance_scale")]:
    with pytest.raises(ValueError, match=message):
      ARSamplerConfig(**kw)
  model = _model()
  x, states, mask = _inputs()
  with pytest.raises(ValueError, match=r"tokens must be \[batch, 12\]"):
    model.init(jax.random.key(0), x[:, :5], states, mask)
  with pytest.raises(ValueError, match="cross_attention_dim"):
    model.init(jax.random.key(0), x, states[..., :4], mask)
  with pytest.raises(ValueError, match="input_classes"):
    _model(causal=False).init(jax.random.key(0), x, states, mask)
