"""eDiff-I expert denoisers over timestep intervals: which expert owns which t, and their weights.

An ensemble of E experts splits the timesteps ``0..T-1`` into E contiguous intervals, expert 0
owning the lowest noise (t near 0). Each sampling step runs only the expert that owns its t, so an
ensemble costs one network call per step, like a single denoiser.

* ``ExpertIntervals``: the split, from explicit boundaries or as eDiff-I's tree of equal-mass
  splits of the training distribution of t (``ExpertIntervals.tree``); ``expert_of(t)`` is
  traceable.
* ``ExpertParams``: an ensemble's denoiser weights, the single model's tree with every leaf
  stacked on a leading ``expert`` axis ``[E, ...]``, carrying its intervals as static data (so a
  jitted program routes without further arguments).
* ``sample_expert_timesteps``: training draws for each expert only from its own interval.

Pure: imports nothing from training, data or the models.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.diffusion.losses import LossHistory
from vqd_jax.diffusion.losses import MIN_COUNT_FOR_IMPORTANCE
from vqd_jax.diffusion.losses import importance_weights


@dataclasses.dataclass(frozen=True)
class ExpertIntervals:
  """E contiguous intervals over ``0..T-1``; expert e owns ``starts[e] <= t < starts[e + 1]``.

  Attributes:
    boundaries: the E - 1 first timesteps of experts 1..E-1, strictly increasing in ``1..T-1``.
    num_timesteps: T.
  """
  boundaries: tuple[int, ...]
  num_timesteps: int

  def __post_init__(self):
    t_count = int(self.num_timesteps)
    bounds = tuple(int(b) for b in self.boundaries)
    object.__setattr__(self, "boundaries", bounds)
    object.__setattr__(self, "num_timesteps", t_count)
    if t_count < 1:
      raise ValueError(f"num_timesteps must be >= 1, got {t_count}.")
    for b in bounds:
      if not 1 <= b <= t_count - 1:
        raise ValueError(f"Expert boundary {b} is out of range: boundaries must lie in "
                         f"[1, {t_count - 1}] (T = {t_count}) so that no interval is empty.")
    for a, b in zip(bounds, bounds[1:]):
      if b <= a:
        raise ValueError(f"Expert boundaries {list(bounds)} are not strictly increasing ({a} then "
                         f"{b}): an interval would be empty or reversed; sort them and drop "
                         "duplicates.")

  @classmethod
  def tree(cls, probs: Sequence[float] | np.ndarray, high_depth: int = 1, low_depth: int = 1
           ) -> "ExpertIntervals":
    """eDiff-I's tree over the training distribution ``probs`` ``[T]`` of t (3 experts).

    The first split halves the probability mass; only the extreme branches grow: ``high_depth``
    more halvings of the high-noise half give the high-noise leaf (the top ``2^-(high_depth+1)``
    of the mass), ``low_depth`` more of the low-noise half the low-noise leaf (the bottom
    ``2^-(low_depth+1)``); one complementary expert owns everything between. Depth 1 on each side
    is the quarter / half / quarter split; eDiff-I's base (leaves at tree levels 9 and 3) is
    ``high_depth=8, low_depth=2``. Discrete t: a leaf owns every t whose mass starts (counted from
    its end of the chain) below the leaf's quantile, so a leaf is never empty.

    Returns intervals ordered low noise (expert 0) to high noise (expert 2).
    """
    p = np.asarray(probs, np.float64)
    if p.ndim != 1 or p.size < 3:
      raise ValueError(f"probs must be a [T] vector with T >= 3, got shape {p.shape}.")
    if np.any(p < 0) or not np.isfinite(p).all() or p.sum() <= 0:
      raise ValueError("probs must be finite, non-negative and not all zero.")
    for name, depth in (("high_depth", high_depth), ("low_depth", low_depth)):
      if int(depth) != depth or depth < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {depth}.")
    p = p / p.sum()
    high_q, low_q = 0.5 ** (high_depth + 1), 0.5 ** (low_depth + 1)
    mass_above = np.cumsum(p[::-1])[::-1] - p   # mass of s > t
    mass_below = np.cumsum(p) - p               # mass of s < t
    high_start = int(np.argmax(mass_above < high_q - 1e-12))
    low_end = int(np.nonzero(mass_below < low_q - 1e-12)[0].max()) + 1
    if not low_end < high_start:
      raise ValueError(f"The tree with high_depth={high_depth}, low_depth={low_depth} leaves no "
                       f"timestep for the complementary expert over T={p.size} (low leaf "
                       f"0..{low_end - 1}, high leaf {high_start}..{p.size - 1}); increase the "
                       "depths or give explicit boundaries.")
    return cls((low_end, high_start), p.size)

  @property
  def num_experts(self) -> int:
    return len(self.boundaries) + 1

  @property
  def starts(self) -> tuple[int, ...]:
    """First timestep of each expert, ``[E]``."""
    return (0,) + self.boundaries

  def interval(self, expert: int) -> tuple[int, int]:
    """``(first, last)`` timesteps, both inclusive, of ``expert``."""
    ends = self.boundaries + (self.num_timesteps,)
    return self.starts[expert], ends[expert] - 1

  def expert_of(self, t: Any) -> jax.Array:
    """The owning expert of timesteps ``t`` (any shape, int) as int32 (traceable)."""
    bounds = jnp.asarray(self.boundaries, jnp.int32)
    return jnp.searchsorted(bounds, jnp.asarray(t, jnp.int32), side="right").astype(jnp.int32)


@flax.struct.dataclass
class ExpertParams:
  """A denoiser ensemble's weights: ``stacked`` leaves ``[E, ...]``; ``intervals`` is static."""
  stacked: Any
  intervals: ExpertIntervals = flax.struct.field(pytree_node=False)

  def select(self, expert: jax.Array) -> Any:
    """The single-model weights of ``expert`` (an int32 scalar, may be traced)."""
    return select_expert(self.stacked, expert)


def select_expert(stacked: Any, expert: jax.Array) -> Any:
  """Leaf ``[E, ...]`` -> ``[...]`` of expert ``expert`` (traced index: one dynamic slice each)."""
  return jax.tree.map(lambda p: jax.lax.dynamic_index_in_dim(p, expert, 0, keepdims=False),
                      stacked)


def stack_experts(params: Any, num_experts: int) -> Any:
  """Every leaf of a single model's tree copied ``num_experts`` times: ``[...]`` -> ``[E, ...]``."""
  return jax.tree.map(lambda p: jnp.broadcast_to(p, (num_experts,) + p.shape), params)


def interval_probs(history: LossHistory, intervals: ExpertIntervals, importance: bool
                   ) -> jax.Array:
  """``[E, T]``: each expert's training distribution of t, the base distribution (importance
  weights once the history is full, else uniform) restricted to its interval and renormalised."""
  t_count = intervals.num_timesteps
  ready = jnp.all(history.Lt_count > MIN_COUNT_FOR_IMPORTANCE) & importance
  base = jnp.where(ready, importance_weights(history), 1.0 / t_count)
  owner = intervals.expert_of(jnp.arange(t_count))
  inside = owner[None, :] == jnp.arange(intervals.num_experts)[:, None]
  restricted = jnp.where(inside, base[None, :], 0.0)
  return restricted / jnp.sum(restricted, axis=1, keepdims=True)


def sample_expert_timesteps(key: jax.Array, history: LossHistory, intervals: ExpertIntervals,
                            rows_per_expert: int, importance: bool = True
                            ) -> tuple[jax.Array, jax.Array]:
  """``(t [E, b], pt [E, b])``: b draws per expert from its own interval, and their probability
  under that expert's distribution (``interval_probs``)."""
  if history.Lt_history.shape[0] != intervals.num_timesteps:
    raise ValueError(f"The loss history covers {history.Lt_history.shape[0]} timesteps, the "
                     f"intervals {intervals.num_timesteps}.")
  probs = interval_probs(history, intervals, importance)
  logits = jnp.log(jnp.maximum(probs, 1e-30)) + jnp.where(probs > 0, 0.0, -jnp.inf)
  t = jax.random.categorical(key, logits[:, None, :], shape=(intervals.num_experts,
                                                             rows_per_expert))
  t = t.astype(jnp.int32)
  pt = jnp.take_along_axis(probs, t, axis=1).astype(jnp.float32)
  return t, pt
