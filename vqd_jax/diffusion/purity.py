"""The purity-prior high-quality sampler of Improved VQ-Diffusion, as one ``lax.scan``.

Semantics of the official ``p_sample`` with ``prior_rule=2``, rearranged for a
compiled loop: every network call reveals a set number of still-masked positions, chosen without
replacement with probability ∝ purity (the max of p̂(x0) at that position) by Gumbel-top-k, and
fills them with a draw from ``softmax((1 + w·purity)·log p̂)`` (Eq. 11). Revealed tokens never
change again; the last call fills every remaining mask.

How many to reveal: after call i the number of masks left is ``round(M0 · C̄(u_{i+1}) / C̄(u_0))``,
where M0 is the number masked at the start and u_i runs linearly from the start time to 0, so the
reveal curve follows the schedule's expected one (about N/T tokens per call for the released
schedule with T calls). More calls than timesteps are allowed: calls then share timesteps, as the
official loop does when it caps reveals per call (``prior_ps``).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.diffusion.logspace import gumbel_noise
from vqd_jax.diffusion.logspace import sample_categorical


def reveal_fractions(cum_mask: np.ndarray, start_t: int, num_steps: int) -> np.ndarray:
  """``[num_steps]`` float32 fraction of the initial masks left after each call (last is 0).

  Args:
    cum_mask: float64 C̄ indexed by ``t + 1`` (``schedules.CumulativeSchedule.mask``).
    start_t: time of the first call.
    num_steps: number of calls.
  """
  if num_steps == 1:
    return np.zeros((1,), np.float32)
  grid = start_t * (1.0 - np.arange(1, num_steps) / (num_steps - 1))
  mask_at = np.interp(grid, np.arange(cum_mask.shape[0] - 1), cum_mask[1:])
  fractions = np.append(mask_at / cum_mask[start_t + 1], 0.0)
  return np.clip(fractions, 0.0, 1.0).astype(np.float32)


def purity(log_x0: jax.Array) -> jax.Array:
  """``[B, N, K]`` -> ``[B, N]`` max probability per position, divided by its max over positions."""
  score = jnp.clip(jnp.exp(jnp.max(log_x0, axis=-1)), 0.0, 1.0)
  return score / (jnp.max(score, axis=-1, keepdims=True) + 1e-10)


def choose_positions(key: jax.Array, score: jax.Array, candidates: jax.Array,
                     count: jax.Array) -> jax.Array:
  """Picks ``count[b]`` candidate positions per row without replacement, P ∝ ``score``.

  Gumbel-top-k: the ``count`` largest ``log score + Gumbel`` keys are a draw without replacement
  (the same law as ``torch.multinomial(score, count)``). ``score``/``candidates``: ``[B, N]``;
  ``count``: ``[B]`` int. Returns a ``[B, N]`` bool selection.
  """
  keys = jnp.log(jnp.maximum(score, 1e-30)) + gumbel_noise(key, score.shape)
  keys = jnp.where(candidates, keys, -jnp.inf)
  rank = jnp.argsort(jnp.argsort(-keys, axis=-1, stable=True), axis=-1, stable=True)
  return candidates & (rank < count[:, None])


def purity_loop(predict: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array,
                x: jax.Array, regenerate: jax.Array, times: np.ndarray, fractions: np.ndarray,
                purity_weight: float, mask_index: int) -> jax.Array:
  """Runs the purity sampler.

  Args:
    predict: ``(x [B, N], t []) -> [B, N, K]`` prepared log p̂(x0) (guidance/truncation applied).
    key: PRNG key.
    x: ``[B, N]`` int32 start tokens; masked positions inside ``regenerate`` get filled.
    regenerate: ``[B, N]`` bool, positions this sampler may write.
    times: ``[S]`` int network times, non-increasing.
    fractions: ``[S]`` from ``reveal_fractions``.
    purity_weight: w in ``softmax((1 + w·purity)·log p̂)``; 0 draws from p̂ itself.
    mask_index: K.

  Returns:
    ``[B, N]`` int32 tokens with no [MASK] left inside ``regenerate``.
  """
  initial_masks = jnp.sum((x == mask_index) & regenerate, axis=-1).astype(jnp.float32)

  def step(tokens, inputs):
    t, fraction, step_key = inputs
    log_x0 = predict(tokens, t)
    score = purity(log_x0)
    value_key, position_key = jax.random.split(step_key)
    values = sample_categorical(value_key, (1.0 + purity_weight * score[..., None]) * log_x0)
    masked = (tokens == mask_index) & regenerate
    remaining = jnp.round(fraction * initial_masks).astype(jnp.int32)
    count = jnp.maximum(jnp.sum(masked, axis=-1) - remaining, 0)
    reveal = choose_positions(position_key, score, masked, count)
    return jnp.where(reveal, values, tokens), None

  keys = jax.random.split(key, len(times))
  inputs = (jnp.asarray(times, jnp.int32), jnp.asarray(fractions, jnp.float32), keys)
  tokens, _ = jax.lax.scan(step, x, inputs)
  return tokens
