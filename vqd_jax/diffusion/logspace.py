"""Log-space primitives shared by the process, the losses and the samplers (channels last)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# log(1e-30) in float32 (= -69.0776): the public code's value for "zero" in a log one-hot.
LOG_EPS = float(np.log(np.float32(1e-30)))
# Floor the samplers clamp model log-probabilities to (public code: clamp(min=-70)).
LOG_FLOOR = -70.0


def log_add_exp(a: jax.Array, b: jax.Array) -> jax.Array:
  """log(exp(a) + exp(b)) that is exact when either side is -inf and has finite gradients there.

  ``jnp.logaddexp(-inf, -inf)`` is right (-inf) but its gradient is NaN, and the x0 sentinel of the
  schedule (log B̄ = log C̄ = -inf) produces exactly that case inside ``jnp.where`` branches, whose
  NaN gradients would leak into training.
  """
  big = jnp.maximum(a, b)
  shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(big), big, 0.0))
  total = jnp.exp(a - shift) + jnp.exp(b - shift)
  positive = total > 0
  return jnp.where(positive, shift + jnp.log(jnp.where(positive, total, 1.0)), -jnp.inf)


def index_to_log_onehot(x: jax.Array, num_classes: int) -> jax.Array:
  """Integer tokens ``[...]`` -> log one-hot ``[..., num_classes]``, zeros as ``LOG_EPS``.

  Same values as the public ``index_to_log_onehot`` (log of the one-hot clamped at 1e-30), but
  channels last.
  """
  if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer):
    raise TypeError(f"index_to_log_onehot needs integer tokens, got dtype {jnp.asarray(x).dtype}.")
  onehot = x[..., None] == jnp.arange(num_classes, dtype=x.dtype)
  return jnp.where(onehot, 0.0, LOG_EPS).astype(jnp.float32)


def log_onehot_to_index(log_x: jax.Array) -> jax.Array:
  """``[..., C]`` log-probabilities -> ``[...]`` int32 argmax."""
  return jnp.argmax(log_x, axis=-1).astype(jnp.int32)


def gumbel_noise(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Standard Gumbel noise, ``-log(-log(u + 1e-30) + 1e-30)`` with u ~ U[0, 1) in float32.

  The 1e-30 offsets are the public code's; they keep u = 0 finite.
  """
  u = jax.random.uniform(key, shape, jnp.float32)
  return -jnp.log(-jnp.log(u + 1e-30) + 1e-30)


def sample_categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
  """Gumbel-max sample over the last axis: ``[..., C]`` unnormalised log-probs -> ``[...]`` int32.

  -inf logits are never drawn. Same seed, same shapes -> same tokens.
  """
  return log_onehot_to_index(logits + gumbel_noise(key, logits.shape))
