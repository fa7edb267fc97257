"""k-means over codebook vectors: plain (k-means++ then Lloyd) and balanced (equal cluster sizes).

A code's coarse label is its cluster. Plain k-means minimises the inertia Σ_k |v_k - c_{label_k}|²;
balanced k-means minimises it with every cluster holding exactly K / C codes, so each coarse label
leaves the fine predictor the same number of candidates.

Everything is numpy. Squared distances are |x|² - 2 x·c + |c|² through a float32 matrix product on
mean-centred vectors (in row blocks); sums, centroids and the reported inertia are float64 on the
original vectors. The same seed gives the same result.

The balanced assignment step is a transportation problem (each code to one cluster, each cluster
exactly K / C codes, least total squared distance), solved by the auction algorithm with ε-scaling
(Bertsekas): clusters carry prices, every unassigned code bids for the cluster with the least
distance + price, a full cluster keeps its highest bidders and its price becomes its lowest accepted
bid. The result is within K·ε of the optimum for the current centroids, with ε ending at 1e-4 of the
mean squared distance to the nearest centroid. Prices carry over between Lloyd iterations, so later
iterations need few bidding rounds.
"""

from __future__ import annotations

import dataclasses
import operator

import numpy as np

_BLOCK = 4096  # rows per distance block: bounds the [rows, C] temporary
_MAX_ROUNDS = 20_000  # bidding rounds per ε phase before the capacity repair finishes the rest
_EPS_FINAL = 1e-4  # final ε as a fraction of the mean squared distance to the nearest centroid
_EPS_STEP = 8.0  # ε shrinks by this factor per phase
_EPS_WARM = 64.0  # warm-started auctions begin at this multiple of the final ε


@dataclasses.dataclass(frozen=True)
class KMeansResult:
  """A clustering of K vectors into C clusters.

  Attributes:
    labels: ``[K]`` int32, the cluster of each vector (the code -> cluster table).
    centroids: ``[C, D]`` float32, the mean of each cluster's members.
    inertia: Σ_k |vectors[k] - centroids[labels[k]]|², in float64.
    iterations: Lloyd iterations run (balanced: those after the plain warm start).
  """

  labels: np.ndarray
  centroids: np.ndarray
  inertia: float
  iterations: int


def kmeans(vectors: np.ndarray, num_clusters: int, *, seed: int = 0, iters: int = 100,
           balanced: bool = False, tol: float = 1e-6) -> KMeansResult:
  """Clusters ``vectors`` ``[K, D]`` into ``num_clusters`` = C clusters.

  Args:
    vectors: ``[K, D]`` finite values, e.g. a VQ codebook.
    num_clusters: C in [1, K]; with ``balanced``, C must divide K.
    seed: seeds the k-means++ initialisation (``np.random.default_rng(seed)``).
    iters: most Lloyd iterations (for balanced: for each of the plain and the balanced stage).
    balanced: every cluster gets exactly K / C vectors.
    tol: stop once the relative inertia decrease of an iteration is below this.

  Returns:
    The ``KMeansResult``.
  """
  x64, k, c = _checked(vectors, num_clusters, iters)
  if balanced and k % c:
    raise ValueError(f"Balanced k-means needs the number of vectors K={k} to be divisible by "
                     f"num_clusters C={c}; choose a C that divides {k}.")
  centred = x64 - x64.mean(0)  # keeps float32 |x|² - 2x·c + |c|² accurate far from the origin
  x = centred.astype(np.float32)
  labels, centroids, iterations = _lloyd(x, centred, _kmeans_plus_plus(x, c, seed), iters, tol)
  if balanced:
    labels, centroids, iterations = _balanced_lloyd(x, centred, centroids, iters, tol)
  centroids = _means(x64, labels, c).astype(np.float32)
  return KMeansResult(labels=labels.astype(np.int32), centroids=centroids,
                      inertia=_inertia(x64, labels, centroids), iterations=iterations)


def _checked(vectors, num_clusters, iters) -> tuple[np.ndarray, int, int]:
  """float64 ``[K, D]`` copy of ``vectors``, K and C, after checking the arguments."""
  x = np.asarray(vectors)
  if x.ndim != 2 or 0 in x.shape:
    raise ValueError(f"vectors must be a non-empty 2-D array [K, D] (one row per code), got shape "
                     f"{x.shape}; reshape the codebook to [num_codes, code_dim].")
  if not (np.issubdtype(x.dtype, np.number) and not np.iscomplexobj(x)):
    raise ValueError(f"vectors must be real numbers, got dtype {x.dtype}.")
  x = x.astype(np.float64)
  bad = ~np.isfinite(x) | (np.abs(x) > np.finfo(np.float32).max)
  if bad.any():
    raise ValueError(f"vectors hold {int(bad.sum())} non-finite or beyond-float32 values (first in "
                     f"row {int(np.argwhere(bad)[0, 0])}); fix or drop those rows first.")
  c = operator.index(num_clusters)
  if not 1 <= c <= x.shape[0]:
    raise ValueError(f"num_clusters must be in [1, K={x.shape[0]}] (at most one cluster per "
                     f"vector), got {c}; choose a smaller number of clusters.")
  if operator.index(iters) < 1:
    raise ValueError(f"iters must be >= 1, got {iters}.")
  return x, x.shape[0], c


def _costs(x: np.ndarray, centroids: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
  """|c|² - 2 x·c ``[rows, C]`` float32: squared distances less the per-row |x|²."""
  out = x[rows] @ centroids.T
  out *= -2.0
  out += np.einsum("cd,cd->c", centroids, centroids)
  return out


def _nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Nearest centroid of each row: labels ``[K]`` int64 and squared distances ``[K]`` float64."""
  labels = np.empty(len(x), np.int64)
  dist = np.einsum("kd,kd->k", x, x).astype(np.float64)
  for start in range(0, len(x), _BLOCK):
    block = _costs(x, centroids, slice(start, start + _BLOCK))
    labels[start:start + len(block)] = best = block.argmin(1)
    dist[start:start + len(block)] += block[np.arange(len(block)), best]
  return labels, np.maximum(dist, 0.0)


def _means(x64: np.ndarray, labels: np.ndarray, c: int) -> np.ndarray:
  """float64 ``[C, D]`` mean of each cluster's rows of ``x64`` (zero for an empty cluster)."""
  sums = np.zeros((c, x64.shape[1]))
  np.add.at(sums, labels, x64)
  return sums / np.maximum(np.bincount(labels, minlength=c), 1)[:, None]


def _inertia(x64: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> float:
  return float(np.sum((x64 - centroids[labels].astype(np.float64)) ** 2))


def _kmeans_plus_plus(x: np.ndarray, c: int, seed: int) -> np.ndarray:
  """Greedy k-means++ (2 + ln C trials per centre, the best kept): ``[C, D]`` initial centroids."""
  rng = np.random.default_rng(seed)
  k, trials = len(x), 2 + int(np.log(c))
  x_sq = np.einsum("kd,kd->k", x, x).astype(np.float64)

  def sq_dist(idx):  # [len(idx), K] float64, exactly 0 from each candidate to itself
    d = x_sq[idx][:, None] + x_sq[None, :] - 2.0 * (x[idx] @ x.T)
    d[np.arange(len(idx)), idx] = 0.0
    return np.maximum(d, 0.0)

  chosen = [int(rng.integers(k))]
  closest = sq_dist(np.array(chosen))[0]
  for _ in range(1, c):
    total = closest.sum()
    if total > 0:
      cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * total, side="right")
      cand = np.minimum(cand, k - 1)
    else:  # every vector sits on a chosen centre: only duplicates are left
      cand = rng.integers(k, size=trials)
    dist = np.minimum(closest, sq_dist(cand))
    best = int(np.argmin(dist.sum(1)))
    chosen.append(int(cand[best]))
    closest = dist[best]
  return x[chosen].copy()


def _fill_empty(labels: np.ndarray, dist: np.ndarray, c: int) -> bool:
  """Moves the vectors farthest from their centroid into empty clusters, in place; any moved."""
  counts = np.bincount(labels, minlength=c)
  empty = np.flatnonzero(counts == 0)
  farthest = iter(np.argsort(-dist, kind="stable"))
  for cluster in empty:
    i = next(i for i in farthest if counts[labels[i]] > 1)  # never empties another cluster
    counts[labels[i]] -= 1
    labels[i] = cluster
  return empty.size > 0


def _lloyd(x, x64, centroids, iters, tol) -> tuple[np.ndarray, np.ndarray, int]:
  """Plain Lloyd iterations: labels ``[K]``, centroids ``[C, D]`` (their means), iterations."""
  c, labels, previous = len(centroids), None, np.inf
  for it in range(1, iters + 1):
    new, dist = _nearest(x, centroids)
    inertia = dist.sum()
    done = labels is not None and np.array_equal(new, labels)
    done = done or previous - inertia <= tol * inertia
    labels, previous = new, inertia
    refilled = _fill_empty(labels, dist, c)
    centroids = _means(x64, labels, c).astype(np.float32)
    if done and not refilled:
      break
  return labels, centroids, it


def _auction(cost: np.ndarray, cap: int, prices: np.ndarray, eps: float) -> np.ndarray:
  """ε-optimal assignment of ``cost`` ``[K, C]`` rows, ``cap`` per column; updates ``prices``."""
  k, c = cost.shape
  owner, paid, free = np.full(k, -1), np.zeros(k), np.arange(k)
  for _ in range(_MAX_ROUNDS):
    if free.size == 0:
      return owner
    value = cost[free] + prices  # float64 [U, C]: lower is better
    rows, first = np.arange(free.size), value.argmin(1)
    best = value[rows, first]
    value[rows, first] = np.inf
    bids = prices[first] + (value.min(1) - best) + eps  # the most a bidder would pay for its best
    # Every bidder contests its cluster with that cluster's current holders.
    touched = np.zeros(c, bool)
    touched[first] = True
    held = np.flatnonzero(owner >= 0)
    held = held[touched[owner[held]]]
    who = np.concatenate([held, free])
    where = np.concatenate([owner[held], first])
    amount = np.concatenate([paid[held], bids])
    order = np.lexsort((-amount, where))  # by cluster, highest bid first
    who, where, amount = who[order], where[order], amount[order]
    rank = np.arange(who.size) - np.searchsorted(where, where)
    keep = rank < cap
    owner[who[keep]], paid[who[keep]] = where[keep], amount[keep]
    owner[who[~keep]] = -1
    free = who[~keep]
    full = rank == cap - 1
    prices[where[full]] = amount[full]  # a full cluster costs its lowest accepted bid
  return _repair(cost, cap, prices, owner)


def _repair(cost, cap, prices, owner) -> np.ndarray:
  """Gives each still-unassigned row its cheapest cluster with room left (exact capacities)."""
  counts = np.bincount(owner[owner >= 0], minlength=cost.shape[1])
  for i in np.flatnonzero(owner < 0):
    value = np.where(counts < cap, cost[i] + prices, np.inf)
    owner[i] = j = int(np.argmin(value))
    counts[j] += 1
  return owner


def _balanced_assign(cost, cap, prices, x_sq, warm) -> np.ndarray:
  """Auction with ε-scaling for one set of centroids: labels ``[K]``; updates ``prices``."""
  low = cost.min(1)
  nearest = float(np.maximum(low + x_sq, 0.0).mean())
  spread = float((cost.max(1) - low).mean())
  eps_final = _EPS_FINAL * nearest if nearest > 0 else 1e-6 * spread if spread > 0 else 1.0
  eps = max(spread / _EPS_STEP, eps_final)
  if warm:
    eps = min(eps, _EPS_WARM * eps_final)
  while True:
    labels = _auction(cost, cap, prices, eps)
    if eps <= eps_final:
      return labels
    eps = max(eps / _EPS_STEP, eps_final)


def _balanced_lloyd(x, x64, centroids, iters, tol) -> tuple[np.ndarray, np.ndarray, int]:
  """Lloyd iterations with the balanced assignment step; returns the lowest-inertia state."""
  k, c = x.shape[0], len(centroids)
  if c == 1:
    return np.zeros(k, np.int64), centroids, 1
  x_sq = np.einsum("kd,kd->k", x, x).astype(np.float64)
  prices, labels, best, previous = np.zeros(c), None, None, np.inf
  for it in range(1, iters + 1):
    new = _balanced_assign(_costs(x, centroids), k // c, prices, x_sq, warm=labels is not None)
    unchanged = labels is not None and np.array_equal(new, labels)
    labels = new
    centroids = _means(x64, labels, c).astype(np.float32)
    inertia = _inertia(x64, labels, centroids)
    if best is None or inertia < best[0]:
      best = (inertia, labels, centroids)
    # ε-optimal steps may raise the inertia by up to K·ε; that also ends the descent.
    if unchanged or previous - inertia <= tol * inertia:
      break
    previous = inertia
  return best[1], best[2], it
