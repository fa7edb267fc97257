"""Schedules, q_pred, q_sample and q_posterior against brute-force float64 transition matrices.

The truth here is built independently of the library: one-step (K+1)x(K+1) matrices from the
textbook definitions, cumulative and multi-step matrices as their products, posteriors by Bayes'
rule over explicit sums.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.diffusion import MaskAndReplace

K, T = 5, 12


def _cumulative_rates(schedule, k, t_count):
  """(Ā, C̄) for t = 0..T-1 from the definitions in the reference notes (§1.1) / the paper."""
  if schedule == "released":
    ramp = np.arange(t_count) / (t_count - 1)
    return 0.99999 + ramp * (0.000009 - 0.99999), 0.000009 + ramp * (0.99999 - 0.000009)
  frac = np.arange(1, t_count + 1) / t_count
  return 1.0 - frac, 0.9 * frac


def _matrix(a, b, c, k):
  """Row-stochastic mask-and-replace matrix: M[i, j] = q(x_next = j | x_prev = i)."""
  m = np.zeros((k + 1, k + 1))
  m[:k, :k] = b
  m[np.arange(k), np.arange(k)] += a
  m[:k, k] = c
  m[k, k] = 1.0
  return m


def _brute_force(schedule, k=K, t_count=T):
  """Cumulative matrices Q̄[t + 1] (index 0 = identity) and multi-step Q(s, t) as products."""
  keep, mask = _cumulative_rates(schedule, k, t_count)
  keep, mask = np.concatenate([[1.0], keep]), np.concatenate([[0.0], mask])
  steps = []
  for t in range(t_count):
    a = keep[t + 1] / keep[t]
    c = 1 - (1 - mask[t + 1]) / (1 - mask[t])
    steps.append(_matrix(a, (1 - a - c) / k, c, k))
  cum = [np.eye(k + 1)]
  for step in steps:
    cum.append(cum[-1] @ step)
  multi = {}
  for s in range(-1, t_count):
    prod = np.eye(k + 1)
    for t in range(s + 1, t_count):
      prod = prod @ steps[t]
      multi[s, t] = prod
  return cum, multi


@pytest.fixture(scope="module", params=["released", "paper"])
def setup(request):
  return request.param, MaskAndReplace(num_classes=K, num_timesteps=T, schedule=request.param), \
      _brute_force(request.param)


def test_released_schedule_matches_published_values():
  # Table of §1.1 of the reference notes (K = 4096, T = 100), computed from the public code.
  process = MaskAndReplace(num_classes=4096, num_timesteps=100, schedule="released")
  idx = np.arange(100)
  step = lambda name: np.exp(np.asarray(getattr(process, name), np.float64)[idx, idx])
  cum = lambda name: np.exp(np.asarray(getattr(process, name), np.float64)[1:])
  table = {0: (0.99999, 1e-6, 9e-6, 0.99999, 9e-6), 1: (0.989899, 1.01e-8, 0.0101009, 0.989889,
                                                         0.0101098),
           50: (0.980000, 3.96e-8, 0.0199996, 0.494949, 0.505050),
           98: (0.500223, 2.47e-5, 0.499753, 0.0101098, 0.989889),
           99: (0.000890, 9.88e-5, 0.999011, 9e-6, 0.99999)}
  for t, (a, kb, c, cum_a, cum_c) in table.items():
    got = (step("log_step_keep")[t], 4096 * step("log_step_replace")[t], step("log_step_mask")[t],
           cum("log_cum_keep")[t], cum("log_cum_mask")[t])
    np.testing.assert_allclose(got, (a, kb, c, cum_a, cum_c), rtol=2e-3, err_msg=f"t={t}")
  np.testing.assert_allclose(4096 * cum("log_cum_replace"), 1e-6, rtol=1e-4)
  # The x0 sentinel at index 0.
  assert float(process.log_cum_keep[0]) == 0.0
  assert float(process.log_cum_replace[0]) == float(process.log_cum_mask[0]) == -np.inf


def test_paper_schedule_end_points():
  process = MaskAndReplace(num_classes=K, num_timesteps=T, schedule="paper")
  mask = np.exp(np.asarray(process.log_cum_mask, np.float64))
  replace = K * np.exp(np.asarray(process.log_cum_replace, np.float64))
  np.testing.assert_allclose(mask[-1], 0.9, rtol=1e-6)
  np.testing.assert_allclose(replace[-1], 0.1, rtol=1e-6)
  np.testing.assert_allclose(np.diff(mask[1:]), 0.9 / T, rtol=1e-5)  # linear
  assert float(process.log_cum_keep[-1]) == -np.inf  # x_{T-1} forgets x0 entirely


def test_stored_transitions_equal_matrix_products(setup):
  _, process, (cum, multi) = setup
  e = lambda x: np.exp(np.asarray(x, np.float64))
  for t in range(T):
    got = _matrix(e(process.log_cum_keep[t + 1]), e(process.log_cum_replace[t + 1]),
                  e(process.log_cum_mask[t + 1]), K)
    np.testing.assert_allclose(got, cum[t + 1], rtol=2e-6, atol=1e-12)
    for s in range(-1, t):
      got = _matrix(e(process.log_step_keep[s + 1, t]), e(process.log_step_replace[s + 1, t]),
                    e(process.log_step_mask[s + 1, t]), K)
      np.testing.assert_allclose(got, multi[s, t], rtol=2e-6, atol=1e-12, err_msg=f"{s}->{t}")


def test_q_pred_is_the_matrix_product(setup):
  _, process, (cum, multi) = setup
  rng = np.random.default_rng(0)
  # Distributions with mass on [MASK] too, which the public formula gets wrong.
  probs = rng.dirichlet(np.ones(K + 1), size=(T + 1, 3))
  log_x = jnp.asarray(np.log(probs), jnp.float32)
  t = np.arange(-1, T, dtype=np.int32)
  q_pred = jax.jit(process.q_pred)
  got = np.exp(np.asarray(q_pred(log_x, t), np.float64))
  want = np.stack([probs[i] @ cum[i] for i in range(T + 1)])
  np.testing.assert_allclose(got, want, atol=3e-7)
  # From an intermediate time.
  pairs = [(s, t) for (s, t) in multi if s >= 0]
  s_arr, t_arr = (np.array(v, np.int32) for v in zip(*pairs))
  probs = rng.dirichlet(np.ones(K + 1), size=(len(pairs), 2))
  got = np.exp(np.asarray(q_pred(jnp.asarray(np.log(probs), jnp.float32), t_arr, s_arr)))
  want = np.stack([probs[i] @ multi[p] for i, p in enumerate(pairs)])
  np.testing.assert_allclose(got, want, atol=3e-7)


def test_q_posterior_is_bayes_rule_for_every_step_and_skip(setup):
  _, process, (cum, multi) = setup
  rng = np.random.default_rng(1)
  pairs = [(s, t) for (s, t) in multi]  # every s in [-1, t - 1], every t
  # One row per (s, t); one token per possible x_t value (K codes and [MASK]).
  x_t = np.tile(np.arange(K + 1, dtype=np.int32), (len(pairs), 1))
  p_x0 = rng.dirichlet(np.ones(K), size=x_t.shape)
  p_x0 *= rng.choice([1.0, 0.7], size=x_t.shape + (1,))  # some rows truncated (mass < 1)
  s_arr, t_arr = (np.array(v, np.int32) for v in zip(*pairs))
  fn = jax.jit(process.q_posterior)
  got = np.exp(np.asarray(fn(jnp.asarray(np.log(p_x0), jnp.float32), x_t, t_arr, s_arr),
                          np.float64))
  want = np.zeros_like(got)
  for row, (s, t) in enumerate(pairs):
    for n, j in enumerate(x_t[row]):
      # p(x_s = i | x_t = j) = Σ_k p̂_k q(x_t = j | x_s = i) q(x_s = i | x0 = k) / q(x_t = j | x0 = k)
      bayes = multi[s, t][:, j][None, :] * cum[s + 1][:K, :] / cum[t + 1][:K, j][:, None]
      want[row, n] = p_x0[row, n] @ bayes
  # [MASK] after a real x_t is 0 in truth; the library keeps the public log(1e-30) factor.
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-5)
  np.testing.assert_allclose(got.sum(-1), p_x0.sum(-1), rtol=2e-5)


def test_default_t_prev_is_one_step_and_minus_one_is_identity(setup):
  _, process, _ = setup
  rng = np.random.default_rng(2)
  log_x0 = jnp.asarray(np.log(rng.dirichlet(np.ones(K), size=(2, K + 1))), jnp.float32)
  x_t = np.tile(np.arange(K + 1, dtype=np.int32), (2, 1))
  posterior = jax.jit(process.q_posterior, static_argnums=(2, 3))  # concrete t: checked, no NaN
  for t in (0, 3, T - 1):
    np.testing.assert_array_equal(posterior(log_x0, x_t, t, None), posterior(log_x0, x_t, t, t - 1))
    out = posterior(log_x0, x_t, t, -1)
    np.testing.assert_array_equal(out[..., :K], log_x0)  # bit-exact log p(x0)
    assert np.all(np.asarray(out[..., K]) == -np.inf)


def test_q_sample_frequencies_match_q_pred():
  process = MaskAndReplace(num_classes=K, num_timesteps=T, schedule="paper")
  x0 = jnp.asarray(np.tile(np.array([0, 3, K]), (4000, 1)), jnp.int32)  # K = already masked
  draw, q_pred = jax.jit(process.q_sample), jax.jit(process.q_pred)
  log_onehot = jnp.asarray(np.log(np.eye(K + 1)[np.asarray(x0[:1])] + 1e-38), jnp.float32)
  for t in (-1, 0, 5, T - 1):
    x_t = np.asarray(draw(jax.random.key(t + 1), x0, t))
    probs = np.exp(np.asarray(q_pred(log_onehot, t)))[0]
    for col in range(3):
      counts = np.bincount(x_t[:, col], minlength=K + 1)
      expected = probs[col] * len(x_t)
      keep = expected > 0
      assert np.all(counts[~keep] == 0)
      chi2 = np.sum((counts[keep] - expected[keep]) ** 2 / expected[keep])
      assert chi2 < 35.0, (t, col, counts, expected)  # df <= 5: p < 1e-5


def test_process_is_an_immutable_pytree_usable_in_jit():
  process = MaskAndReplace(num_classes=K, num_timesteps=T)
  leaves, treedef = jax.tree.flatten(process)
  assert all(leaf.dtype == jnp.float32 for leaf in leaves)
  assert jax.tree.unflatten(treedef, leaves).num_classes == K
  with pytest.raises(AttributeError, match="immutable"):
    process.num_classes = 3
  log_x0 = jnp.full((1, 2, K), -np.log(K), jnp.float32)
  x_t = jnp.array([[K, 1]], jnp.int32)
  as_argument = jax.jit(lambda p, t: p.q_posterior(log_x0, x_t, t))(process, jnp.int32(4))
  built_inside = jax.jit(lambda t: MaskAndReplace(K, T).q_posterior(log_x0, x_t, t))(4)
  np.testing.assert_array_equal(as_argument, process.q_posterior(log_x0, x_t, 4))
  np.testing.assert_array_equal(built_inside, as_argument)


def test_bad_inputs_fail_with_clear_messages():
  process = MaskAndReplace(num_classes=K, num_timesteps=T)
  log_x0 = jnp.zeros((2, 3, K), jnp.float32)
  x_t = jnp.zeros((2, 3), jnp.int32)
  with pytest.raises(ValueError, match="drop the \\[MASK\\] column"):
    process.q_posterior(jnp.zeros((2, 3, K + 1)), x_t, 1)
  with pytest.raises(ValueError, match="channels-last"):
    process.q_posterior(jnp.zeros((2, K, 3)), x_t, 1)
  with pytest.raises(ValueError, match="x_t has shape"):
    process.q_posterior(log_x0, jnp.zeros((2, 4), jnp.int32), 1)
  with pytest.raises(TypeError, match="integer token ids"):
    process.q_posterior(log_x0, jnp.zeros((2, 3)), 1)
  with pytest.raises(ValueError, match=r"t has values in \[12, 12\] but must lie in \[0, 11\]"):
    process.q_posterior(log_x0, x_t, T)
  with pytest.raises(ValueError, match="must lie in"):
    jax.jit(lambda x: process.q_posterior(x, x_t, -1))(log_x0)  # concrete even under jit
  with pytest.raises(ValueError, match="t_prev < t"):
    process.q_posterior(log_x0, x_t, 3, 3)
  with pytest.raises(ValueError, match="shape \\[B\\]"):
    process.q_posterior(log_x0, x_t, jnp.array([1, 2, 3]))
  with pytest.raises(ValueError, match="ids in"):
    process.q_posterior(log_x0, x_t + K + 1, 1)
  with pytest.raises(ValueError, match="Unknown schedule"):
    MaskAndReplace(num_classes=K, num_timesteps=T, schedule="cosine")
  # Traced timesteps cannot be checked at trace time: out-of-range values poison the result.
  traced = jax.jit(lambda t: process.q_posterior(log_x0, x_t, t))
  assert np.all(np.isnan(np.asarray(traced(jnp.array([T, 1], jnp.int32)))[0]))
  assert np.all(np.isfinite(np.asarray(traced(jnp.array([T - 1, 1], jnp.int32)))[..., :K]))
