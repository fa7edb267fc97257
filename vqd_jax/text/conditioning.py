"""Text conditioning glue: the text-encoder interface and classifier-free-guidance caption dropping.

``TextEncoderProtocol`` is all the denoiser side needs from a text encoder, so a trainable
``TextEncoder``, a frozen CLIP or a T5 encoder are interchangeable:

  states = encoder.encode(params, ids, mask)   # ids/mask [B, L] -> states [B, L, D]

``D`` must equal the denoiser's ``cross_attention_dim``. An encoder that has no use for the mask (CLIP
as used by VQ-Diffusion) still accepts it.

Classifier-free guidance (CFG) needs an "empty caption". VQ-Diffusion's improved variant learns it:
``NullEmbedding`` holds a learned ``[L, D]`` state sequence (diffusers
``LearnedClassifierFreeSamplingEmbeddings.embeddings``) and ``drop_captions`` swaps it in for a
``rate`` fraction of the training examples.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


@runtime_checkable
class TextEncoderProtocol(Protocol):
  """Anything that maps token ids to cross-attention states."""

  def encode(self, params: Any, ids: jax.Array, mask: jax.Array | None) -> jax.Array:
    """ids [B, L] int, mask [B, L] bool (True = real token) -> states [B, L, D] (deterministic)."""


class NullEmbedding(nn.Module):
  """Learned "no caption" text states for CFG: a ``[length, width]`` parameter named ``embeddings``.

  ``init_stddev`` should match the scale of the real text states: 1.0 for LayerNorm-ed states such as
  ``TextEncoder``'s, about ``width ** -0.5`` for VQ-Diffusion's L2-normalised CLIP states.
  """
  length: int
  width: int
  init_stddev: float = 1.0
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, batch_size: int | None = None) -> jax.Array:
    """Returns [length, width], or [batch_size, length, width] when ``batch_size`` is given."""
    states = self.param(
        "embeddings",
        nn.with_logical_partitioning(nn.initializers.normal(self.init_stddev),
                                     ("length", "text_embed")),
        (self.length, self.width), self.param_dtype)
    if batch_size is None:
      return states
    return jnp.broadcast_to(states[None], (batch_size, self.length, self.width))


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
    null_states: [L, D] (e.g. ``NullEmbedding`` output) or [B, L, D].
    rate: probability of dropping each example's caption (0 disables).

  Returns:
    ``(states, mask)`` with dropped rows equal to the null states and their mask all True (every
    null position is meaningful). ``mask`` stays None if it was None.
  """
  batch, length, width = states.shape
  if null_states.shape not in ((length, width), (batch, length, width)):
    raise ValueError(f"null_states must be [{length}, {width}] or [{batch}, {length}, {width}] like "
                     f"the text states, got {null_states.shape}; size NullEmbedding(length, width) "
                     "to the tokenizer's max_length and the encoder width.")
  dropped = caption_drop_mask(key, batch, rate)
  null_states = jnp.broadcast_to(null_states.astype(states.dtype), states.shape)
  states = jnp.where(dropped[:, None, None], null_states, states)
  if mask is not None:
    mask = jnp.where(dropped[:, None], True, mask)
  return states, mask
