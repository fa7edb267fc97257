"""Training loss and importance sampling against brute-force numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.diffusion import LossHistory
from vqd_jax.diffusion import MaskAndReplace
from vqd_jax.diffusion import diffusion_loss
from vqd_jax.diffusion import importance_weights
from vqd_jax.diffusion import multinomial_kl
from vqd_jax.diffusion import sample_timesteps
from vqd_jax.diffusion import sample_top_timesteps
from vqd_jax.diffusion import update_history

K, T, N = 4, 8, 6


def _bayes_posterior(p_x0, j, s, t, cum_keep, cum_replace, cum_mask):
  """float64 p(x_s | x_t = j) = Σ_k p̂_k q(x_t | x_s) q(x_s | x0 = k) / q(x_t | x0 = k)."""
  def cum(tt):
    m = np.zeros((K + 1, K + 1))
    m[:K, :K] = cum_replace[tt + 1]
    m[np.arange(K), np.arange(K)] += cum_keep[tt + 1]
    m[:K, K] = cum_mask[tt + 1]
    m[K, K] = 1.0
    return m
  step = np.linalg.solve(cum(s), cum(t)) if s >= 0 else cum(t)  # Q̄_s · Q(s, t) = Q̄_t
  return p_x0 @ (step[:, j][None, :] * cum(s)[:K] / cum(t)[:K, j][:, None])


def _reference_loss(process, p_model, x0, x_t, t, pt, aux_weight, mask_weight):
  """The official formula (notes §2), term by term in float64 numpy."""
  e = lambda x: np.exp(np.asarray(x, np.float64))
  cum = (e(process.log_cum_keep), e(process.log_cum_replace), e(process.log_cum_mask))
  vb, aux = np.zeros(len(t)), np.zeros(len(t))
  for b in range(len(t)):
    for n in range(N):
      model = _bayes_posterior(p_model[b, n], x_t[b, n], t[b] - 1, t[b], *cum)
      weight = mask_weight[0] if x_t[b, n] == K else mask_weight[1]
      if t[b] == 0:
        vb[b] -= np.log(model[x0[b, n]])
        aux[b] -= np.log(model[x0[b, n]])
      else:
        true = _bayes_posterior(np.eye(K)[x0[b, n]], x_t[b, n], t[b] - 1, t[b], *cum)
        nz = true > 1e-30
        vb[b] += weight * np.sum(true[nz] * np.log(true[nz] / model[nz]))
        aux[b] -= weight * np.log(p_model[b, n, x0[b, n]])
  total = np.mean((vb + aux_weight * (2 - t / T) * aux) / pt) / N
  return total, vb, aux


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  t = np.array([0, 1, 3, 7, 7, 5], np.int32)
  x0 = rng.integers(0, K, size=(len(t), N)).astype(np.int32)
  x_t = x0.copy()
  x_t[rng.random(x_t.shape) < 0.5] = K
  x_t[1, 0] = (x0[1, 0] + 1) % K  # a replaced token
  p_model = rng.dirichlet(np.ones(K), size=x0.shape)
  pt = rng.uniform(0.05, 0.3, size=len(t)).astype(np.float32)
  return x0, x_t, t, pt, p_model


@pytest.mark.parametrize("schedule", ["released", "paper"])
def test_loss_matches_official_formula(batch, schedule):
  process = MaskAndReplace(num_classes=K, num_timesteps=T, schedule=schedule)
  x0, x_t, t, pt, p_model = batch
  aux_weight, mask_weight = 0.3, (2.0, 0.5)
  loss, terms = jax.jit(lambda lp: diffusion_loss(
      process, lp, x0, x_t, t, pt, aux_weight=aux_weight, mask_weight=mask_weight))(
          jnp.asarray(np.log(p_model), jnp.float32))
  want, vb, aux = _reference_loss(process, p_model, x0, x_t, t, pt, aux_weight, mask_weight)
  np.testing.assert_allclose(terms.vb, vb, rtol=2e-4, atol=1e-5)
  np.testing.assert_allclose(terms.aux, aux, rtol=2e-4, atol=1e-5)
  np.testing.assert_allclose(loss, want, rtol=2e-4)
  np.testing.assert_allclose(terms.vb_per_token, vb.mean() / N, rtol=2e-4)
  assert float(terms.masked_fraction) == pytest.approx(np.mean(x_t == K))


def test_perfect_prediction_has_zero_kl_and_finite_gradients(batch):
  process = MaskAndReplace(num_classes=K, num_timesteps=T)
  x0, x_t, t, pt, p_model = batch
  loss_fn = jax.jit(lambda lp: diffusion_loss(process, lp, x0, x_t, t, pt))
  onehot = jnp.asarray(np.where(np.eye(K)[x0] > 0, 0.0, -70.0), jnp.float32)
  _, terms = loss_fn(onehot)
  np.testing.assert_allclose(np.asarray(terms.vb)[t > 0], 0.0, atol=1e-4)
  grad = jax.jit(jax.grad(lambda lp: loss_fn(lp)[0]))(jnp.asarray(np.log(p_model), jnp.float32))
  assert np.all(np.isfinite(grad)) and np.any(np.abs(grad) > 1e-3)


def test_multinomial_kl_handles_impossible_states():
  log_p = jnp.array([[0.0, -jnp.inf, -jnp.inf], [np.log(0.5), np.log(0.5), -jnp.inf]])
  log_q = jnp.array([[np.log(0.5), np.log(0.5), -jnp.inf], [np.log(0.25), np.log(0.75), -jnp.inf]])
  want = [np.log(2.0), 0.5 * np.log(2.0) + 0.5 * np.log(0.5 / 0.75)]
  np.testing.assert_allclose(multinomial_kl(log_p, log_q), want, rtol=1e-6)
  grad = jax.grad(lambda q: multinomial_kl(log_p, q).sum())(log_q)
  assert np.all(np.isfinite(grad))


def test_timesteps_are_uniform_until_every_count_exceeds_ten():
  history = LossHistory(Lt_history=jnp.linspace(1.0, 50.0, T),
                        Lt_count=jnp.full((T,), 11, jnp.int32).at[3].set(10))
  t, pt = jax.jit(sample_timesteps, static_argnums=2)(jax.random.key(0), history, 8000)
  np.testing.assert_allclose(pt, 1.0 / T)
  counts = np.bincount(np.asarray(t), minlength=T)
  chi2 = np.sum((counts - 1000.0) ** 2 / 1000.0)
  assert chi2 < 40.0, counts  # df = 7: p < 1e-5


def test_timesteps_stay_uniform_without_importance_sampling():
  history = LossHistory(Lt_history=jnp.linspace(1.0, 50.0, T),
                        Lt_count=jnp.full((T,), 11, jnp.int32))
  t, pt = jax.jit(sample_timesteps, static_argnums=(2, 3))(jax.random.key(0), history, 8000, False)
  np.testing.assert_allclose(pt, 1.0 / T)
  counts = np.bincount(np.asarray(t), minlength=T)
  chi2 = np.sum((counts - 1000.0) ** 2 / 1000.0)
  assert chi2 < 40.0, counts  # df = 7: p < 1e-5 (the sqrt-history weights would give ~770)


def test_top_timesteps_are_uniform_over_the_top_range():
  t, pt = jax.jit(sample_top_timesteps, static_argnums=(1, 2, 3))(jax.random.key(1), 6000, 5, T)
  np.testing.assert_allclose(pt, 1.0 / (T - 5))
  counts = np.bincount(np.asarray(t), minlength=T)
  assert counts[:5].sum() == 0
  chi2 = np.sum((counts[5:] - 2000.0) ** 2 / 2000.0)
  assert chi2 < 25.0, counts  # df = 2: p < 1e-5
  with pytest.raises(ValueError, match="first must be in"):
    sample_top_timesteps(jax.random.key(1), 4, T, T)


def test_importance_sampling_follows_sqrt_history_with_decoder_override():
  lt_history = np.linspace(1.0, 50.0, T).astype(np.float32)
  lt_history[0] = 1e6  # the decoder term must not dominate: it takes t = 1's weight
  history = LossHistory(Lt_history=jnp.asarray(lt_history), Lt_count=jnp.full((T,), 11, jnp.int32))
  weight = np.sqrt(lt_history.astype(np.float64) + 1e-10) + 1e-4
  weight[0] = weight[1]
  probs = weight / weight.sum()
  np.testing.assert_allclose(importance_weights(history), probs, rtol=1e-5)
  t, pt = jax.jit(sample_timesteps, static_argnums=2)(jax.random.key(1), history, 20000)
  np.testing.assert_allclose(pt, probs[np.asarray(t)], rtol=1e-5)
  counts = np.bincount(np.asarray(t), minlength=T)
  chi2 = np.sum((counts - 20000 * probs) ** 2 / (20000 * probs))
  assert chi2 < 40.0, (counts, 20000 * probs)


def test_update_history_matches_numpy_with_duplicates():
  rng = np.random.default_rng(3)
  h0 = rng.uniform(0, 5, T).astype(np.float32)
  c0 = rng.integers(0, 20, T).astype(np.int32)
  t = np.array([2, 5, 2, 2, 0, 7, 5], np.int32)
  lt = rng.uniform(0, 3, len(t)).astype(np.float32)
  update = jax.jit(update_history)
  out = update(LossHistory(jnp.asarray(h0), jnp.asarray(c0)), t, lt)
  want_h, want_c = h0.astype(np.float64), c0.copy()
  for step in np.unique(t):
    sq = lt[t == step].astype(np.float64) ** 2
    want_h[step] = 0.9 * want_h[step] + 0.1 * sq.mean()
    want_c[step] += len(sq)
  np.testing.assert_allclose(out.Lt_history, want_h, rtol=1e-6)
  np.testing.assert_array_equal(out.Lt_count, want_c)
  # Order of the batch does not matter.
  perm = rng.permutation(len(t))
  again = update(LossHistory(jnp.asarray(h0), jnp.asarray(c0)), t[perm], lt[perm])
  np.testing.assert_allclose(again.Lt_history, out.Lt_history, rtol=1e-6)


def test_loss_rejects_bad_shapes():
  process = MaskAndReplace(num_classes=K, num_timesteps=T)
  x = jnp.zeros((2, N), jnp.int32)
  with pytest.raises(ValueError, match="drop the \\[MASK\\] column"):
    diffusion_loss(process, jnp.zeros((2, N, K + 1)), x, x, jnp.array([1, 2]), jnp.ones(2))
  with pytest.raises(ValueError, match="Shape mismatch"):
    diffusion_loss(process, jnp.zeros((2, N + 1, K)), x, x, jnp.array([1, 2]), jnp.ones(2))
  with pytest.raises(ValueError, match="ids in"):
    diffusion_loss(process, jnp.zeros((2, N, K)), x + K, x, jnp.array([1, 2]), jnp.ones(2))
  with pytest.raises(ValueError, match="must lie in"):
    diffusion_loss(process, jnp.zeros((2, N, K)), x, x, jnp.array([1, T]), jnp.ones(2))
