"""The mask-and-replace forward process and its exact posteriors (VQ-Diffusion, Gu et al. 2022).

Tokens take K real codes ``0..K-1`` plus [MASK] = K. All distributions are channels last:
log-probabilities over the K+1 states are ``[B, N, K+1]``, model predictions of x0 are ``[B, N, K]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.diffusion import schedules
from vqd_jax.diffusion import validation
from vqd_jax.diffusion.logspace import LOG_EPS
from vqd_jax.diffusion.logspace import log_add_exp

# Leaves of the pytree, in flattening order. ``cum_*`` are ``[T + 1]`` indexed by ``t + 1``;
# ``step_*`` are ``[T + 1, T]`` indexed by ``[s + 1, t]`` (transition from time s to time t).
_LEAVES = ("log_cum_keep", "log_cum_replace", "log_cum_mask", "log_cum_stay", "log_cum_unmasked",
           "log_step_keep", "log_step_replace", "log_step_mask", "log_step_stay")


def _per_example(v: jax.Array) -> jax.Array:
  """``[]`` or ``[B]`` gathered schedule values -> broadcastable against ``[B, N, C]``."""
  return v[:, None, None] if v.ndim == 1 else v


@jax.tree_util.register_pytree_node_class
class MaskAndReplace:
  """The mask-and-replace discrete diffusion of VQ-Diffusion, as an immutable pytree.

  ``MaskAndReplace(num_classes=K, num_timesteps=T, schedule="released")`` derives the schedule in
  float64 numpy (see ``vqd_jax.diffusion.schedules``) and keeps float32 logs as pytree leaves, with
  K, T and the schedule name as static metadata. It can be built inside ``jax.jit``, passed to
  jitted functions as an argument, or closed over.

  Stored leaves (float32 logs; log 0 = -inf):
    log_cum_keep / log_cum_replace / log_cum_mask: log Ā, B̄, C̄ ``[T + 1]``, index ``t + 1``;
      index 0 is the x0 sentinel (Ā = 1, B̄ = C̄ = 0).
    log_cum_stay: log(Ā + B̄), the probability that x_t equals x0.
    log_cum_unmasked: log(1 - C̄).
    log_step_keep / log_step_replace / log_step_mask / log_step_stay: the composed transition from
      time s to time t, ``[T + 1, T]`` indexed ``[s + 1, t]``; ``[t, t]`` is the public one-step
      (log a_t, log b_t, log c_t) and row 0 repeats the cumulative values.

  Timesteps: ``t`` is the code index 0..T-1 (paper step t+1). Values are checked at trace time when
  concrete; traced out-of-range values make the result NaN rather than silently reading a clamped
  table entry.
  """

  __slots__ = ("num_classes", "num_timesteps", "schedule") + _LEAVES

  def __init__(self, num_classes: int, num_timesteps: int = 100, schedule: str = "released"):
    cum = schedules.cumulative_schedule(schedule, num_classes, num_timesteps)
    keep, replace, mask = schedules.composed_transitions(cum, int(num_classes))
    log = schedules.float32_log
    values = dict(
        log_cum_keep=log(cum.keep), log_cum_replace=log(cum.replace), log_cum_mask=log(cum.mask),
        log_cum_stay=log(cum.keep + cum.replace), log_cum_unmasked=log(1.0 - cum.mask),
        log_step_keep=log(keep), log_step_replace=log(replace), log_step_mask=log(mask),
        log_step_stay=log(keep + replace))
    self._set(int(num_classes), int(num_timesteps), str(schedule),
              [jnp.asarray(values[name]) for name in _LEAVES])

  def _set(self, num_classes: int, num_timesteps: int, schedule: str, leaves: list[Any]) -> None:
    object.__setattr__(self, "num_classes", num_classes)
    object.__setattr__(self, "num_timesteps", num_timesteps)
    object.__setattr__(self, "schedule", schedule)
    for name, leaf in zip(_LEAVES, leaves):
      object.__setattr__(self, name, leaf)

  def __setattr__(self, name: str, value: Any) -> None:
    raise AttributeError(f"MaskAndReplace is immutable; build a new one instead of setting {name}.")

  def tree_flatten(self):
    return [getattr(self, name) for name in _LEAVES], (self.num_classes, self.num_timesteps,
                                                        self.schedule)

  @classmethod
  def tree_unflatten(cls, aux, leaves):
    obj = object.__new__(cls)
    obj._set(*aux, list(leaves))
    return obj

  def __reduce__(self):
    # Pickle/deepcopy rebuild from the static fields (the tables are derived from them), which also
    # sidesteps the immutability guard that slot-wise restoring would trip.
    return (MaskAndReplace, (self.num_classes, self.num_timesteps, self.schedule))

  def __repr__(self) -> str:
    return (f"MaskAndReplace(num_classes={self.num_classes}, num_timesteps={self.num_timesteps}, "
            f"schedule={self.schedule!r})")

  @property
  def mask_index(self) -> int:
    """Index of the [MASK] state (= K)."""
    return self.num_classes

  # --------------------------------------------------------------------------------------------
  # Forward process.

  def q_pred(self, log_x: jax.Array, t: Any, t_from: Any = -1) -> jax.Array:
    """log q(x_t | x_{t_from}) marginalised over ``exp(log_x)``: the exact matrix product.

    Args:
      log_x: ``[B, N, K+1]`` log-probabilities of x_{t_from} (any non-negative measure is fine).
      t: scalar or ``[B]`` target time in [-1, T-1] (-1 returns ``log_x``).
      t_from: scalar or ``[B]`` start time, default -1 (x0), giving log q(x_t | x0) as in the
        public ``q_pred``; ``t_from <= t`` (equal times give the identity).

    Returns:
      ``[B, N, K+1]`` log-probabilities.

    Unlike the public formula (which assumes x_{t_from} has no [MASK] mass), the replace term is
    weighted by the real-code mass, so inputs that put mass on [MASK] are transported exactly.
    """
    k, t_count = self.num_classes, self.num_timesteps
    log_x = validation.check_class_axis("log_x", log_x, k + 1, "states (K real codes + [MASK])")
    if log_x.ndim != 3:
      raise ValueError(f"log_x must be [B, N, K+1], got shape {log_x.shape}.")
    validation.check_time_order(t, t_from, "t_from", strict=False)
    t = validation.check_time("t", t, log_x.shape[0], -1, t_count - 1)
    t_from = validation.check_time("t_from", t_from, log_x.shape[0], -1, t_count - 1)
    row, col = t_from + 1, jnp.maximum(t, 0)
    keep = _per_example(self.log_step_keep[row, col])
    replace = _per_example(self.log_step_replace[row, col])
    mask = _per_example(self.log_step_mask[row, col])
    log_x = log_x.astype(jnp.float32)
    real_mass = jax.nn.logsumexp(log_x[..., :k], axis=-1, keepdims=True)
    out = jnp.concatenate([log_add_exp(log_x[..., :k] + keep, replace + real_mass),
                           log_add_exp(log_x[..., k:], mask + real_mass)], axis=-1)
    # Equal times (including t = t_from = -1) are the identity; return it bit-exactly.
    return jnp.where(_per_example(t == t_from), log_x, out)

  def q_sample(self, key: jax.Array, x0: Any, t: Any) -> jax.Array:
    """Draws x_t ~ q(x_t | x0) exactly.

    Args:
      key: PRNG key.
      x0: ``[B, N]`` integer codes in [0, K] ([MASK] stays [MASK]).
      t: scalar or ``[B]`` time in [-1, T-1].

    Returns:
      ``[B, N]`` int32 tokens.

    Sampled as "mask with prob C̄, else replace by a uniform code with prob K·B̄ / (1 - C̄), else
    keep" with 46-bit uniforms, so the released schedule's 1e-6 replace rate is honoured exactly
    (a float32 Gumbel-max over K+1 logits cannot resolve it), at O(B·N) instead of O(B·N·K) cost.
    """
    k = self.num_classes
    x0 = validation.check_integer_tokens("x0", x0, high=k)
    t = validation.check_time("t", t, x0.shape[0], -1, self.num_timesteps - 1)
    index = t + 1
    per_row = lambda v: v[:, None] if v.ndim == 1 else v
    p_mask = per_row(jnp.exp(self.log_cum_mask[index]))
    log_replace = self.log_cum_replace[index] + np.log(k) - self.log_cum_unmasked[index]
    p_replace = per_row(jnp.exp(log_replace))
    k_mask, k_replace, k_code = jax.random.split(key, 3)
    masked = _fine_uniform(k_mask, x0.shape) < p_mask
    replaced = _fine_uniform(k_replace, x0.shape) < p_replace
    random_code = jax.random.randint(k_code, x0.shape, 0, k, dtype=jnp.int32)
    x_t = jnp.where(masked, k, jnp.where(replaced, random_code, x0.astype(jnp.int32)))
    return jnp.where(x0 == k, k, x_t).astype(jnp.int32)

  # --------------------------------------------------------------------------------------------
  # Reverse process.

  def q_posterior(self, log_x0: Any, x_t: Any, t: Any, t_prev: Any = None) -> jax.Array:
    """log p(x_{t_prev} | x_t) = log Σ_k p̂(x0=k) q(x_{t_prev} | x_t, x0=k), unclamped.

    Args:
      log_x0: ``[B, N, K]`` log p̂(x0 | x_t) over the real codes (channels last). Need not be
        normalised (truncation removes mass; the output then sums to Σ p̂).
      x_t: ``[B, N]`` integer tokens in [0, K].
      t: scalar or ``[B]`` time in [0, T-1].
      t_prev: scalar or ``[B]`` earlier time in [-1, t-1]; default ``t - 1``. For ``t_prev < t - 1``
        this is the exact multi-step posterior through the composed transition from t_prev to t
        (the public fast sampler instead relabels t). ``t_prev = -1`` returns ``log_x0`` itself
        with a -inf [MASK] column.

    Returns:
      ``[B, N, K+1]`` log-probabilities, not clamped (diffusers does not clamp; the official
      code clamps to [-70, 0]). [MASK] after a real x_t gets log(1e-30) + its scale, as in both
      public implementations, not -inf; with ``t_prev = -1`` it is -inf. Concrete out-of-range
      times raise; traced out-of-range times give NaN.
    """
    k = self.num_classes
    log_x0 = validation.check_class_axis("log_x0", log_x0, k)
    if log_x0.ndim != 3:
      raise ValueError(f"log_x0 must be [B, N, K], got shape {log_x0.shape}.")
    x_t = validation.check_integer_tokens("x_t", x_t, high=k)
    if x_t.shape != log_x0.shape[:-1]:
      raise ValueError(f"x_t has shape {x_t.shape} but log_x0 has {log_x0.shape}; x_t must be "
                       "log_x0.shape[:-1] ([B, N]).")
    batch = x_t.shape[0]
    checked = not (validation.is_traced(t) or validation.is_traced(t_prev))
    if t_prev is not None:
      validation.check_time_order(t, t_prev)
    t = validation.check_time("t", t, batch, 0, self.num_timesteps - 1)
    t_prev = t - 1 if t_prev is None else validation.check_time(
        "t_prev", t_prev, batch, -1, self.num_timesteps - 2)
    out = self.posterior_unchecked(log_x0, x_t, t, t_prev)
    if not checked:
      valid = (t >= 0) & (t < self.num_timesteps) & (t_prev >= -1) & (t_prev < t)
      out = jnp.where(_per_example(valid), out, jnp.nan)
    return out

  def posterior_unchecked(self, log_x0: jax.Array, x_t: jax.Array, t: jax.Array,
                          t_prev: jax.Array) -> jax.Array:
    """``q_posterior`` without input checks, for loops that validated their times up front.

    Shapes as in ``q_posterior``; ``t`` and ``t_prev`` are int32 ``[]`` or ``[B]``.
    """
    k, t_count = self.num_classes, self.num_timesteps
    log_x0 = log_x0.astype(jnp.float32)
    t = jnp.clip(t, 0, t_count - 1)
    s = jnp.clip(t_prev, -1, t_count - 2)
    gather = lambda table, *idx: _per_example(table[idx])
    is_mask = (x_t == k)[..., None]
    is_code = x_t[..., None] == jnp.arange(k, dtype=x_t.dtype)
    # v_k = log q(x_t | x0 = k).
    log_qt = jnp.where(is_mask, gather(self.log_cum_mask, t + 1),
                       jnp.where(is_code, gather(self.log_cum_stay, t + 1),
                                 gather(self.log_cum_replace, t + 1)))
    # Normalise p̂(x0=k) / q(x_t | x0=k) in log space; Z carries the scale back at the end.
    ratio = log_x0 - log_qt
    log_z = jax.nn.logsumexp(ratio, axis=-1, keepdims=True)
    ratio = ratio - log_z
    # Σ_k ratio_k q(x_s = i | x0 = k) for real i (the ratios sum to one) and for [MASK].
    to_real = log_add_exp(ratio + gather(self.log_cum_keep, s + 1),
                          gather(self.log_cum_replace, s + 1))
    to_mask = jnp.broadcast_to(gather(self.log_cum_mask, s + 1), is_mask.shape)
    # w_i = log q(x_t | x_s = i) through the composed transition s -> t.
    from_real = jnp.where(is_mask, gather(self.log_step_mask, s + 1, t),
                          jnp.where(is_code, gather(self.log_step_stay, s + 1, t),
                                    gather(self.log_step_replace, s + 1, t)))
    # q(x_t = code | x_s = [MASK]) is 0; like both public implementations we use log(1e-30) there.
    # It keeps the [MASK] entry finite (about e^-55 after the scale Z when B̄ is tiny) so the
    # result agrees entry for entry with diffusers, and it cannot be drawn in practice.
    from_mask = jnp.where(is_mask, 0.0, LOG_EPS)
    out = jnp.concatenate([to_real + from_real, to_mask + from_mask], axis=-1) + log_z
    # From x0 (s = -1) the posterior is p̂ itself; return it bit-exactly.
    at_x0 = jnp.concatenate([log_x0, jnp.full(is_mask.shape, -jnp.inf, jnp.float32)], axis=-1)
    return jnp.where(_per_example(s == -1), at_x0, out)


def _fine_uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """U[0, 1) on a 2^-46 grid: float32 uniforms sit on a 2^-23 grid, too coarse for p ~ 1e-6."""
  coarse_key, fine_key = jax.random.split(key)
  coarse = jax.random.uniform(coarse_key, shape, jnp.float32)
  fine = jax.random.uniform(fine_key, shape, jnp.float32)
  return coarse + fine * np.float32(2.0 ** -23)
