"""Noise schedules of the mask-and-replace process, derived in float64 numpy.

Time convention (same as the public code): ``t = 0 .. T-1`` is the code index of paper step ``t+1``,
and ``t = -1`` means "x0 itself". Every array here is indexed by ``t + 1``, so entry 0 is the x0
sentinel (keep everything: Ā = 1, B̄ = 0, C̄ = 0) and entry ``t + 1`` is time ``t``. The public code
stores the sentinel at the end instead and reaches it through ``t mod (T + 1)``; keeping it first
makes ``t = -1`` an ordinary index.

A token that is a real code i at time s is, at a later time t,

* still i with probability ``a + b``, any other real code with probability ``b`` each,
* [MASK] (index K) with probability ``c``; [MASK] never leaves.

The cumulative triple (Ā_t, B̄_t, C̄_t) is that transition from x0 to x_t; the composed triple
(a, b, c)(s, t) is the transition from x_s to x_t. Composing mask-and-replace steps gives
mask-and-replace again, with::

  a(s, t) = Ā_t / Ā_s                          # keep: both segments must keep
  1 - c(s, t) = (1 - C̄_t) / (1 - C̄_s)          # not-masked-by-t = not-masked-by-s x survive (s, t]
  b(s, t) = (1 - a - c) / K                    # the rows must sum to one

(``b`` then also satisfies ``B̄_t = Ā_s b + B̄_s (1 - c)``, which the tests check with matrix
products.) For ``s = t - 1`` this is exactly the public one-step (a_t, b_t, c_t), computed in the same
float64 operation order so the float32 logs match diffusers' buffers bit for bit.

Schedules:

* ``"released"``: the public code and every released config (``alpha_init_type: 'alpha1'``) and
  diffusers. Ā falls linearly 0.99999 -> 0.000009 and C̄ rises 0.000009 -> 0.99999 over
  t = 0..T-1, so K·B̄_t = 1e-6 for every t: almost pure absorbing (mask-only) diffusion.
* ``"paper"``: the VQ-Diffusion paper's text: the cumulative mask rate γ̄ rises linearly to 0.9 and
  the cumulative replace rate K·β̄ to 0.1, both from 0 at x0; so Ā_t = 1 - (t + 1) / T reaches 0 at
  the last step (x_{T-1} carries no information about x0 then).
"""

from __future__ import annotations

import dataclasses

import numpy as np

SCHEDULES = ("released", "paper")

# End points of the released linear curves (official ``alpha_schedule`` defaults).
_RELEASED_KEEP = (0.99999, 0.000009)
_RELEASED_MASK = (0.000009, 0.99999)
# Final cumulative rates of the paper schedule.
_PAPER_FINAL_MASK = 0.9
_PAPER_FINAL_REPLACE = 0.1


@dataclasses.dataclass(frozen=True)
class CumulativeSchedule:
  """q(x_t | x0) for t = -1 .. T-1, float64, each array ``[T + 1]`` indexed by ``t + 1``.

  Attributes:
    keep: Ā, extra probability of keeping the x0 code.
    replace: B̄, probability of each particular real code (so K·B̄ is the total replace rate).
    mask: C̄, probability of [MASK].
  """

  keep: np.ndarray
  replace: np.ndarray
  mask: np.ndarray


def cumulative_schedule(name: str, num_classes: int, num_timesteps: int) -> CumulativeSchedule:
  """Builds the float64 cumulative schedule ``name`` for K = ``num_classes`` real codes.

  Args:
    name: one of ``SCHEDULES``.
    num_classes: K, the number of real codes (the [MASK] class is extra).
    num_timesteps: T >= 2.

  Returns:
    The schedule, with the x0 sentinel (1, 0, 0) at index 0.
  """
  if name not in SCHEDULES:
    raise ValueError(f"Unknown schedule {name!r}; choose one of {SCHEDULES}.")
  if int(num_classes) < 2:
    raise ValueError(f"num_classes (K real codes) must be >= 2, got {num_classes}.")
  if int(num_timesteps) < 2:
    raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}.")
  k, t_count = int(num_classes), int(num_timesteps)
  if name == "released":
    # Same float64 operation order as the public code so the stored float32 logs agree exactly.
    ramp = np.arange(0, t_count) / (t_count - 1)
    keep = ramp * (_RELEASED_KEEP[1] - _RELEASED_KEEP[0]) + _RELEASED_KEEP[0]
    mask = ramp * (_RELEASED_MASK[1] - _RELEASED_MASK[0]) + _RELEASED_MASK[0]
    replace = (1 - keep - mask) / k
  else:
    # Defined directly (not as 1 - mask - replace) so the final keep rate is exactly 0, not -3e-17.
    frac = np.arange(1, t_count + 1, dtype=np.float64) / t_count
    keep = 1.0 - frac
    mask = _PAPER_FINAL_MASK * frac
    replace = _PAPER_FINAL_REPLACE * frac / k
  sentinel = lambda x, v: np.concatenate(([v], x)).astype(np.float64)
  return CumulativeSchedule(keep=sentinel(keep, 1.0), replace=sentinel(replace, 0.0),
                            mask=sentinel(mask, 0.0))


def composed_transitions(cum: CumulativeSchedule, num_classes: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(a, b, c)(s, t) for every start ``s`` in [-1, T-2] and end ``t`` in [0, T-1].

  Args:
    cum: the cumulative schedule.
    num_classes: K.

  Returns:
    float64 arrays ``[T + 1, T]`` indexed ``[s + 1, t]``. Row 0 (s = -1) is the cumulative schedule
    itself. Entries with ``s >= t`` hold the identity transition (1, 0, 0); they are never a valid
    request and the process rejects them.
  """
  keep, mask = cum.keep, cum.mask
  t_count = keep.shape[0] - 1
  s_keep, t_keep = keep[:, None], keep[None, 1:]
  with np.errstate(divide="ignore", invalid="ignore"):
    a = t_keep / s_keep
    c = 1 - (1 - mask[None, 1:]) / (1 - mask[:, None])
  b = (1 - a - c) / num_classes
  valid = np.arange(-1, t_count)[:, None] < np.arange(t_count)[None, :]
  a, b, c = (np.where(valid, x, v) for x, v in ((a, 1.0), (b, 0.0), (c, 0.0)))
  # Start at x0: take the cumulative values themselves (1 - (1 - C̄) is not exactly C̄ in floats).
  a[0], b[0], c[0] = cum.keep[1:], cum.replace[1:], cum.mask[1:]
  if np.any(b[valid] <= 0) or np.any(c[valid] < 0) or np.any(a[valid] < 0):
    raise ValueError("Composed transition has a non-positive replace rate; the schedule is not a "
                     "valid mask-and-replace process.")
  return a, b, c


def float32_log(x: np.ndarray) -> np.ndarray:
  """log in float64 (log 0 = -inf), then cast to float32, as the public code stores its buffers."""
  with np.errstate(divide="ignore"):
    return np.log(x).astype(np.float32)
