"""Caption dropout for classifier-free guidance (CFG).

CFG needs an "empty caption". VQ-Diffusion's improved variant learns it (a ``[L, D]`` state
sequence, diffusers ``LearnedClassifierFreeSamplingEmbeddings.embeddings``, kept by the
``Conditioner``); ``drop_captions`` swaps it in for a ``rate`` fraction of the training examples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def caption_drop_mask(key: jax.Array, batch_size: int, rate: float) -> jax.Array:
  """[B] bool: True for the examples whose caption is replaced (each independently with prob. rate)."""
  if isinstance(rate, (int, float)) and not 0.0 <= rate <= 1.0:
    raise ValueError(f"Caption drop rate must be in [0, 1], got {rate}.")
  return jax.random.uniform(key, (batch_size,)) < rate


def drop_captions(key: jax.Array, states: jax.Array, mask: jax.Array | None,
                  null_states: jax.Array, rate: float) -> tuple[jax.Array, jax.Array | None]:
  """Replaces the captions of a random ``rate`` fraction of the batch by the null states.

  Args:
    key: PRNG key; the dropped rows are ``caption_drop_mask(key, B, rate)``.
    states: [B, L, D] text states.
    mask: [B, L] bool text mask, or None (no padding mask in use).
    null_states: [L, D] (the learned null embedding) or [B, L, D].
    rate: probability of dropping each example's caption (0 disables).

  Returns:
    ``(states, mask)`` with dropped rows equal to the null states and their mask all True (every
    null position is meaningful). ``mask`` stays None if it was None.
  """
  batch, length, width = states.shape
  if null_states.shape not in ((length, width), (batch, length, width)):
    raise ValueError(f"null_states must be [{length}, {width}] or [{batch}, {length}, {width}] like "
                     f"the text states, got {null_states.shape}; size the null embedding "
                     "to the tokenizer's max_length and the encoder width.")
  dropped = caption_drop_mask(key, batch, rate)
  null_states = jnp.broadcast_to(null_states.astype(states.dtype), states.shape)
  states = jnp.where(dropped[:, None, None], null_states, states)
  if mask is not None:
    mask = jnp.where(dropped[:, None], True, mask)
  return states, mask
