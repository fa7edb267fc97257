"""k-means and the coarse table against scikit-learn, SciPy's assignment solver and numpy loops."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from vqd_jax.ctf import COARSE_TABLE_FILE
from vqd_jax.ctf import cluster_members
from vqd_jax.ctf import coarse_labels
from vqd_jax.ctf import kmeans
from vqd_jax.ctf import load_coarse_table
from vqd_jax.ctf import save_coarse_table


def _blobs(sizes, dim, spread, seed):
  """Gaussian blobs of the given sizes around centres ``spread`` apart: vectors, true labels."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(len(sizes), dim)) * spread
  truth = np.repeat(np.arange(len(sizes)), sizes)
  return (centres[truth] + rng.normal(size=(len(truth), dim))).astype(np.float32), truth


def _codebook(k, dim, seed):
  return np.random.default_rng(seed).normal(size=(k, dim)).astype(np.float32)


def _same_partition(labels, truth):
  """Each true group maps to one label and no two groups share one."""
  pairs = set(zip(truth.tolist(), labels.tolist()))
  return len(pairs) == len(set(truth.tolist())) == len(set(labels.tolist()))


def _brute_inertia(vectors, labels, centroids):
  x, c = vectors.astype(np.float64), centroids.astype(np.float64)
  return sum(float(np.sum((x[i] - c[labels[i]]) ** 2)) for i in range(len(x)))


def _optimal_balanced_inertia(vectors, centroids, cap):
  """Least inertia of any balanced assignment to fixed centroids (Hungarian on cap copies)."""
  x, c = vectors.astype(np.float64), np.repeat(centroids.astype(np.float64), cap, axis=0)
  cost = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
  rows, cols = linear_sum_assignment(cost)
  return float(cost[rows, cols].sum())


@pytest.mark.parametrize("case", ["blobs", "codebook"])
def test_plain_inertia_matches_sklearn(case):
  if case == "blobs":
    x, _ = _blobs(np.random.default_rng(1).multinomial(512 - 16, [1 / 16] * 16) + 1, 16, 3.0, 0)
    c = 16
  else:
    x, c = _codebook(1024, 32, 0), 32
  # Three initialisations each: one run of either may stop in a poorer local optimum on blobs.
  ours = min(kmeans(x, c, seed=seed).inertia for seed in range(3))
  reference = KMeans(n_clusters=c, n_init=3, random_state=0).fit(x).inertia_
  # Measured ratios ours / sklearn: 1.0000 (blobs), 0.9986 (codebook).
  assert abs(ours / reference - 1) < 0.01


def test_plain_result_is_consistent():
  x = _codebook(1024, 32, 3)
  r = kmeans(x, 32, seed=3)
  assert r.labels.shape == (1024,) and r.labels.dtype == np.int32
  assert r.centroids.shape == (32, 32) and r.centroids.dtype == np.float32
  assert r.inertia == pytest.approx(_brute_inertia(x, r.labels, r.centroids), rel=1e-9)
  for cluster in range(32):
    members = x[r.labels == cluster].astype(np.float64)
    assert len(members) > 0
    np.testing.assert_allclose(r.centroids[cluster], members.mean(0), rtol=1e-5, atol=1e-6)
  # Lloyd's fixed point: every vector sits at its nearest centroid.
  dist = ((x[:, None, :].astype(np.float64) - r.centroids[None].astype(np.float64)) ** 2).sum(-1)
  assert np.all(dist[np.arange(1024), r.labels] <= dist.min(1) * (1 + 1e-5) + 1e-6)


def test_plain_recovers_separated_blobs():
  x, truth = _blobs([40, 10, 25, 60, 5, 30, 50, 36], 8, 20.0, 5)
  r = kmeans(x, 8, seed=0)
  assert _same_partition(r.labels, truth)


def test_balanced_sizes_and_inertia():
  x, c = _codebook(1024, 32, 0), 32
  plain = kmeans(x, c, seed=0)
  balanced = kmeans(x, c, seed=0, balanced=True)
  assert np.all(np.bincount(balanced.labels, minlength=c) == 1024 // c)
  assert balanced.inertia == pytest.approx(
      _brute_inertia(x, balanced.labels, balanced.centroids), rel=1e-9)
  # Measured balanced / plain: 0.998 (plain's local optimum is no lower bound on random codebooks).
  assert 0.95 * plain.inertia <= balanced.inertia <= 1.5 * plain.inertia


def test_balanced_costs_more_on_unequal_blobs():
  x, _ = _blobs([100, 10, 60, 30, 20, 36], 8, 20.0, 2)
  plain = kmeans(x, 8, seed=0)
  balanced = kmeans(x, 8, seed=0, balanced=True)
  assert np.all(np.bincount(balanced.labels, minlength=8) == 32)
  assert balanced.inertia >= plain.inertia


def test_balanced_assignment_is_optimal_for_its_centroids():
  x = _codebook(256, 8, 7)
  r = kmeans(x, 16, seed=1, balanced=True)
  best = _optimal_balanced_inertia(x, r.centroids, 16)
  # The auction stops within K·ε = 1e-4 x the mean squared distance of the optimum.
  assert best <= r.inertia <= best * (1 + 1e-3)


def test_balanced_recovers_equal_blobs():
  x, truth = _blobs([32] * 8, 8, 10.0, 4)
  perm = np.random.default_rng(0).permutation(len(x))
  r = kmeans(x[perm], 8, seed=0, balanced=True)
  assert _same_partition(r.labels, truth[perm])


def test_determinism():
  x = _codebook(512, 16, 9)
  for balanced in (False, True):
    a = kmeans(x, 16, seed=5, balanced=balanced)
    b = kmeans(x, 16, seed=5, balanced=balanced)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia and a.iterations == b.iterations
  assert not np.array_equal(kmeans(x, 16, seed=6).labels, kmeans(x, 16, seed=5).labels)


def test_edge_cluster_counts():
  x = _codebook(64, 4, 0)
  one = kmeans(x, 1, balanced=True)
  assert np.all(one.labels == 0)
  np.testing.assert_allclose(one.centroids[0], x.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
  every = kmeans(x, 64, balanced=True)
  assert sorted(every.labels.tolist()) == list(range(64)) and every.inertia < 1e-9
  duplicates = np.repeat(x[:4], 8, axis=0)  # 4 distinct vectors, 6 clusters: some must be shared
  assert len(set(kmeans(duplicates, 6).labels.tolist())) == 6


def test_errors():
  x = _codebook(100, 4, 0)
  with pytest.raises(ValueError, match=r"K=100.*C=7"):
    kmeans(x, 7, balanced=True)
  with pytest.raises(ValueError, match=r"num_clusters must be in \[1, K=100\]"):
    kmeans(x, 101)
  with pytest.raises(ValueError, match="num_clusters"):
    kmeans(x, 0)
  with pytest.raises(ValueError, match="2-D"):
    kmeans(x[0], 2)
  bad = x.copy()
  bad[17, 2] = np.nan
  with pytest.raises(ValueError, match="row 17"):
    kmeans(bad, 4)


def test_coarse_table_round_trip(tmp_path):
  labels = np.random.default_rng(0).integers(0, 8, size=64)
  path = save_coarse_table(str(tmp_path), labels, num_clusters=8, balanced=False, seed=3,
                           inertia=12.5)
  assert os.path.basename(path) == COARSE_TABLE_FILE and os.listdir(tmp_path) == [COARSE_TABLE_FILE]
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  assert record["format"] == "vqd_jax.coarse_table" and record["version"] == 1
  assert (record["num_codes"], record["num_clusters"], record["inertia"]) == (64, 8, 12.5)
  table = load_coarse_table(str(tmp_path), num_codes=64)
  assert table.labels.dtype == np.int32 and table.labels.tolist() == labels.tolist()
  assert (table.num_clusters, table.balanced, table.seed) == (8, False, 3)


def test_coarse_table_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="--coarse-clusters"):
    load_coarse_table(str(tmp_path))
  save_coarse_table(str(tmp_path), np.arange(16) % 4, num_clusters=4, balanced=True, seed=0,
                    inertia=1.0)
  with pytest.raises(ValueError, match="16 labels but the codebook has 32"):
    load_coarse_table(str(tmp_path), num_codes=32)
  path = os.path.join(tmp_path, COARSE_TABLE_FILE)
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  for field, value, message in (("num_codes", 15, "num_codes field"),
                                ("labels", [0] * 15 + [4], r"\[0, 4\)"),
                                ("format", "other", "not a coarse table")):
    with open(path, "w", encoding="utf-8") as f:
      json.dump({**record, field: value}, f)
    with pytest.raises(ValueError, match=message):
      load_coarse_table(str(tmp_path))


def test_coarse_labels_matches_a_loop():
  rng = np.random.default_rng(0)
  table = rng.integers(0, 8, size=32).astype(np.int32)
  tokens = rng.integers(0, 32, size=(3, 5, 7))
  expected = np.array([[[table[t] for t in row] for row in plane] for plane in tokens])
  np.testing.assert_array_equal(coarse_labels(table, tokens), expected)
  np.testing.assert_array_equal(np.asarray(coarse_labels(jnp.asarray(table), jnp.asarray(tokens))),
                                expected)


def test_cluster_members_partition_the_codes():
  labels = kmeans(_codebook(128, 4, 0), 8, balanced=True).labels
  members = cluster_members(labels, 8)
  assert members.shape == (8, 128) and members.dtype == np.bool_
  np.testing.assert_array_equal(members.sum(0), np.ones(128))
  for code, cluster in enumerate(labels):
    assert members[cluster, code]
  np.testing.assert_array_equal(members.sum(1), np.full(8, 16))
