"""Expert intervals: the tree of equal-mass splits and expert_of against brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax import diffusion
from vqd_jax.diffusion.experts import ExpertIntervals, sample_expert_timesteps


def _brute_tree(p, high_depth, low_depth):
  """Owner of each t by explicit loops: t is in a leaf when the mass strictly beyond it, on the
  leaf's side of the chain, is below the leaf's quantile."""
  p = np.asarray(p, np.float64) / np.sum(p)
  t_count = len(p)
  high_q, low_q = 0.5 ** (high_depth + 1), 0.5 ** (low_depth + 1)
  owner = []
  for t in range(t_count):
    above = sum(p[s] for s in range(t + 1, t_count))
    below = sum(p[s] for s in range(0, t))
    owner.append(2 if above < high_q - 1e-12 else 0 if below < low_q - 1e-12 else 1)
  return owner


def _owners(intervals):
  return [int(intervals.expert_of(t)) for t in range(intervals.num_timesteps)]


def test_uniform_three_expert_tree_is_quarter_half_quarter():
  iv = ExpertIntervals.tree(np.ones(100), high_depth=1, low_depth=1)
  assert iv.boundaries == (25, 75) and iv.num_experts == 3
  assert [iv.interval(e) for e in range(3)] == [(0, 24), (25, 74), (75, 99)]
  assert _owners(iv) == _brute_tree(np.ones(100), 1, 1)


@pytest.mark.parametrize("high_depth,low_depth", [(1, 1), (2, 1), (8, 2), (0, 3), (3, 0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_tree_matches_brute_force_on_random_distributions(high_depth, low_depth, seed):
  p = np.random.default_rng(seed).gamma(0.7, size=100) + 1e-3  # an importance-like vector
  iv = ExpertIntervals.tree(p, high_depth, low_depth)
  assert _owners(iv) == _brute_tree(p, high_depth, low_depth)
  # Each extreme leaf holds at least its quantile of the mass, and one t fewer would hold less.
  q_high, q_low = 0.5 ** (high_depth + 1), 0.5 ** (low_depth + 1)
  pn = p / p.sum()
  lo_end, hi_start = iv.boundaries
  assert pn[hi_start:].sum() >= q_high - 1e-12 > pn[hi_start + 1:].sum()
  assert pn[:lo_end].sum() >= q_low - 1e-12 > pn[:lo_end - 1].sum()


def test_ediffi_deep_high_leaf_keeps_the_last_timestep():
  # The top 1/512 of a uniform T = 100 is less than one step: the leaf keeps t = 99 alone.
  iv = ExpertIntervals.tree(np.ones(100), high_depth=8, low_depth=2)
  assert iv.boundaries == (13, 99)


def test_expert_of_at_every_boundary_traced():
  iv = ExpertIntervals((10, 11, 60), 100)
  t = jnp.arange(100)
  got = jax.jit(iv.expert_of)(t)
  brute = [sum(t_ >= b for b in iv.boundaries) for t_ in range(100)]
  np.testing.assert_array_equal(np.asarray(got), brute)
  for e, b in enumerate(iv.boundaries):
    assert int(iv.expert_of(b - 1)) == e and int(iv.expert_of(b)) == e + 1
  assert iv.starts == (0, 10, 11, 60) and iv.interval(3) == (60, 99)


@pytest.mark.parametrize("bounds,match", [
    ((0, 50), "out of range"), ((50, 100), "out of range"), ((60, 40), "not strictly"),
    ((30, 30), "not strictly")])
def test_bad_boundaries_are_clear_errors(bounds, match):
  with pytest.raises(ValueError, match=match):
    ExpertIntervals(bounds, 100)


def test_tree_without_room_for_the_complement_is_an_error():
  with pytest.raises(ValueError, match="complementary"):
    ExpertIntervals.tree(np.ones(100), 0, 0)
  with pytest.raises(ValueError, match="non-negative"):
    ExpertIntervals.tree(-np.ones(100))


def test_expert_timesteps_stay_in_their_intervals_with_restricted_probabilities():
  iv = ExpertIntervals((25, 75), 100)
  history = diffusion.LossHistory(Lt_history=jnp.linspace(1.0, 4.0, 100),
                                  Lt_count=jnp.full((100,), 20, jnp.int32))
  t, pt = sample_expert_timesteps(jax.random.key(0), history, iv, 4000)
  weights = np.asarray(diffusion.importance_weights(history), np.float64)
  for e in range(3):
    lo, hi = iv.interval(e)
    te = np.asarray(t[e])
    assert te.min() >= lo and te.max() <= hi
    expected = weights[te] / weights[lo:hi + 1].sum()
    np.testing.assert_allclose(np.asarray(pt[e]), expected, rtol=1e-5)
    # Frequencies follow the restricted importance weights (4000 draws: a loose bound).
    freq = np.bincount(te - lo, minlength=hi - lo + 1) / te.size
    assert np.abs(freq - weights[lo:hi + 1] / weights[lo:hi + 1].sum()).max() < 0.02


def test_config_intervals_presets_and_errors():
  from vqd_jax import build, configs_io  # pylint: disable=import-outside-toplevel
  config = configs_io.load_config("configs/diffusion.py:shapes_experts")
  assert build.expert_intervals(config).boundaries == (25, 75)
  assert build.expert_intervals(configs_io.load_config("configs/diffusion.py:shapes")) is None
  explicit = configs_io.load_config("configs/diffusion.py:tiny_experts",
                                    ["experts.num=4", "experts.boundaries=[10, 50, 90]"])
  assert build.expert_intervals(explicit).boundaries == (10, 50, 90)
  for overrides, match in ((["experts.num=4"], "tree split makes 3"),
                           (["experts.boundaries=[10]"], "need 2"),
                           (["experts.num=1"], ">= 2")):
    with pytest.raises(ValueError, match=match):
      build.expert_intervals(configs_io.load_config("configs/diffusion.py:tiny_experts",
                                                    overrides))
