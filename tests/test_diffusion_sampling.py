"""Samplers with denoisers whose output distribution is known, so frequencies have closed forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.diffusion import MaskAndReplace
from vqd_jax.diffusion import cumulative_schedule
from vqd_jax.diffusion import evaluation_times
from vqd_jax.diffusion import sample

K, T = 6, 20
PI = np.array([0.35, 0.25, 0.15, 0.12, 0.08, 0.05])
LOG_PI = jnp.asarray(np.log(PI), jnp.float32)


def fixed_denoiser(log_p=LOG_PI):
  return lambda x_t, t: jnp.broadcast_to(log_p, x_t.shape + (K,))


def sampler(process, batch_size, num_tokens, denoise=None, **kwargs):
  """The jitted program ``key -> tokens``."""
  return jax.jit(lambda key: sample(denoise or fixed_denoiser(), key, process,
                                    batch_size=batch_size, num_tokens=num_tokens, **kwargs))


def run(process, batch_size, num_tokens, seed=0, **kwargs):
  return np.asarray(sampler(process, batch_size, num_tokens, **kwargs)(jax.random.key(seed)))


def assert_frequencies(tokens, probs, threshold=50.0):
  """Chi-square goodness of fit over the K codes (fixed seeds, so no flakiness)."""
  counts = np.bincount(tokens.ravel(), minlength=K + 1)
  assert counts[K] == 0, "a [MASK] survived sampling"
  expected = tokens.size * np.asarray(probs)
  support = expected > 1e-9 * tokens.size
  assert np.all(counts[:K][~support] == 0), (counts, expected)
  chi2 = np.sum((counts[:K][support] - expected[support]) ** 2 / expected[support])
  assert chi2 < threshold, (counts, expected)  # df <= 5; 50 is far beyond p = 1e-6


@pytest.fixture(scope="module")
def process():
  return MaskAndReplace(num_classes=K, num_timesteps=T)


def test_full_sampler_draws_from_the_model(process):
  tokens = run(process, 32, 64)
  assert tokens.dtype == np.int32 and tokens.shape == (32, 64)
  assert_frequencies(tokens, PI)


def test_fast_sampler_reveals_masks_at_the_exact_skip_rate():
  # The fraction of masks the network sees at each evaluation time must follow the schedule,
  # C̄_t / C̄_start, which the public relabelling approximation does not.
  process = MaskAndReplace(num_classes=K, num_timesteps=100, schedule="paper")
  seen = {}

  def denoise(x_t, t):
    jax.debug.callback(lambda t, x: seen.setdefault(int(t[0]), float(np.mean(x == K))), t, x_t)
    return fixed_denoiser()(x_t, t)

  tokens = run(process, 64, 128, denoise=denoise, num_steps=7)
  times = evaluation_times(99, 7)
  assert list(times) == [99, 82, 66, 50, 33, 16, 0]  # round(linspace), half to even
  cum_mask = cumulative_schedule("paper", K, 100).mask
  for t in times:
    expected = cum_mask[t + 1] / cum_mask[100]
    assert abs(seen[t] - expected) < 5 * np.sqrt(expected * (1 - expected) / tokens.size) + 1e-9
  assert np.all(tokens < K)  # ends fully unmasked


def test_truncation_keeps_the_top_mass(process):
  # Sorted PI: cumulative mass above each class = 0, .35, .60, .75, .87, .95. With r = 0.7 the
  # first three classes are kept (mass above < 0.7); the rest drop to -70.
  tokens = run(process, 32, 64, truncation_rate=0.7)
  assert_frequencies(tokens, np.where(np.arange(K) < 3, PI, 0.0) / PI[:3].sum())


def test_classifier_free_guidance_uses_one_call_on_a_doubled_batch(process):
  rng = np.random.default_rng(0)
  log_u = jax.nn.log_softmax(jnp.asarray(rng.normal(size=K), jnp.float32))
  log_c = jax.nn.log_softmax(jnp.asarray(rng.normal(size=K), jnp.float32))
  batch, scale = 16, 3.0

  def denoise(x_t, t):
    assert x_t.shape == (2 * batch, 48) and t.shape == (2 * batch,)
    rows = jnp.concatenate([jnp.broadcast_to(log_u, (batch, 48, K)),
                            jnp.broadcast_to(log_c, (batch, 48, K))])
    return rows

  tokens = run(process, batch, 48, denoise=denoise, guidance_scale=scale)
  assert_frequencies(tokens, jax.nn.softmax(log_u + scale * (log_c - log_u)))


def test_purity_sampler_tempers_values_and_follows_the_reveal_schedule(process):
  seen = []

  def denoise(x_t, t):
    jax.debug.callback(lambda x: seen.append(np.sum(x == K, axis=-1)), x_t)
    return fixed_denoiser()(x_t, t)

  weight = 1.0
  tokens = run(process, 32, 64, denoise=denoise, purity_weight=weight)
  # Every position has purity 1 (normalised), so values ~ softmax(2 log PI) ∝ PI².
  assert_frequencies(tokens, PI ** (1 + weight) / np.sum(PI ** (1 + weight)))
  # Masks seen at call i: round(N · C̄_{t_i} / C̄_{T-1}) in every row, exactly.
  cum_mask = cumulative_schedule("released", K, T).mask
  expected = np.round(64 * cum_mask[evaluation_times(T - 1, T) + 1] / cum_mask[T])
  np.testing.assert_array_equal(np.stack(seen), np.repeat(expected[:, None], 32, axis=1))


def test_purity_sampler_reveals_confident_positions_first():
  process = MaskAndReplace(num_classes=K, num_timesteps=100)
  peaked = jnp.asarray(np.log([0.9] + [0.02] * (K - 1)), jnp.float32)
  flat = jnp.full((K,), -np.log(K), jnp.float32)
  confident = np.arange(64) < 16  # purity 0.9 at 16 positions, 1/6 at 48
  log_p = jnp.where(jnp.asarray(confident)[:, None], peaked, flat)
  revealed_at_second_call = []

  def denoise(x_t, t):
    jax.debug.callback(lambda t, x: revealed_at_second_call.append(x != K) if t[0] == 98 else None,
                       t, x_t)
    return jnp.broadcast_to(log_p, x_t.shape + (K,))

  run(process, 200, 64, denoise=denoise, purity_weight=0.0, num_steps=100)
  (revealed,) = revealed_at_second_call
  assert np.all(revealed.sum(-1) == 1)  # round(64 · C̄_98 / C̄_99) = 63 masks left
  # One draw ∝ normalised purity: P(confident) = 16 / (16 + 48 · (1/6) / 0.9).
  p_confident = 16 / (16 + 48 * (1 / 6) / 0.9)
  frac = revealed[:, confident].sum() / 200
  assert abs(frac - p_confident) < 4 * np.sqrt(p_confident * (1 - p_confident) / 200)
  assert frac > 0.5  # uniform choice would give 16 / 64 = 0.25


@pytest.mark.parametrize("options", [dict(), dict(purity_weight=1.0),
                                     dict(start_from="noise", start_t=8, num_steps=5)])
def test_inpainting_never_changes_kept_tokens(options):
  # The paper schedule replaces codes often, so kept tokens would move if not pinned every step.
  process = MaskAndReplace(num_classes=K, num_timesteps=T, schedule="paper")
  rng = np.random.default_rng(1)
  init = rng.integers(0, K, size=(8, 32)).astype(np.int32)
  regenerate = rng.random((8, 32)) < 0.5
  init[regenerate & (rng.random((8, 32)) < 0.5)] = K  # masks are fine where we regenerate
  violations = []

  def denoise(x_t, t):
    jax.debug.callback(lambda x: violations.append(np.sum(x[~regenerate] != init[~regenerate])),
                       x_t)
    return jnp.broadcast_to(LOG_PI, x_t.shape + (K,))

  tokens = run(process, 8, 32, denoise=denoise, init_tokens=init, inpaint_mask=regenerate,
               **options)
  np.testing.assert_array_equal(tokens[~regenerate], init[~regenerate])
  assert np.all(tokens < K) and len(violations) > 0 and sum(violations) == 0
  assert np.any(tokens[regenerate] != init[regenerate])


def test_same_seed_same_tokens(process):
  fn = sampler(process, 4, 16, truncation_rate=0.9, num_steps=5)
  a, b, c = (np.asarray(fn(jax.random.key(seed))) for seed in (7, 7, 8))
  np.testing.assert_array_equal(a, b)
  assert np.any(a != c)


def test_sampler_is_one_scan_with_one_denoiser_trace(process):
  calls = []

  def denoise(x_t, t):
    calls.append(x_t.shape)
    return fixed_denoiser()(x_t, t)

  jaxpr = jax.make_jaxpr(functools.partial(sample, denoise, process=process, batch_size=2,
                                           num_tokens=8, num_steps=10))(jax.random.key(0))
  assert len(calls) == 1
  top_level = [eqn.primitive.name for eqn in jaxpr.eqns]
  assert top_level.count("scan") == 1
  assert not any(name in ("callback", "io_callback", "pure_callback") for name in top_level)


def test_bad_sampler_inputs_fail_clearly(process):
  with pytest.raises(ValueError, match="must not include a \\[MASK\\] column"):
    run(process, 2, 8, denoise=lambda x, t: jnp.zeros(x.shape + (K + 1,)))
  with pytest.raises(ValueError, match="\\[2B, N, K\\]"):
    run(process, 2, 8, denoise=lambda x, t: jnp.zeros((2, 8, K)), guidance_scale=2.0)
  with pytest.raises(ValueError, match="num_steps=21 exceeds"):
    run(process, 2, 8, num_steps=21)
  with pytest.raises(ValueError, match="start_t must lie in"):
    run(process, 2, 8, start_t=T)
  with pytest.raises(ValueError, match="inpaint_mask needs init_tokens"):
    run(process, 2, 8, inpaint_mask=np.ones((2, 8), bool))
  with pytest.raises(ValueError, match="init_tokens has shape"):
    run(process, 2, 8, init_tokens=np.zeros((2, 9), np.int32))
  with pytest.raises(ValueError, match="kept positions must hold real codes"):
    run(process, 2, 8, init_tokens=np.full((2, 8), K, np.int32),
        inpaint_mask=np.zeros((2, 8), bool))
