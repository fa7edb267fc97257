"""Pooled-text conditioning of the denoiser's AdaLN (DiT / Imagen style), off in the official layout.

The mean of the text states over real tokens is projected to the model width and added to every
AdaLN's timestep embedding, so the caption scales and shifts each position's normalised state.
Why: a relation such as "A to the left of B" asks a position on the left for the first-mentioned
object but a position on the right for the second, the product of where the position is and which
relation was said. Cross-attention queries are linear in the position's state, so without this the
product must be built by an MLP between two cross-attentions; with it, ``LN(h)·(1 + scale(text))``
multiplies the position embedding by a caption-dependent factor inside one layer. (On the shapes
data it did not make the direction learned; the layout warm-up of the diffusion task did, README.)
Not part of any public checkpoint layout (``pooled_text_adaln=False`` there).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqd_jax.transformer.layers import dense

Dtype = Any


def masked_mean(states: jax.Array, mask: jax.Array | None) -> jax.Array:
  """states [B, L, D], mask [B, L] bool (None: all real) -> [B, D] mean over the real tokens."""
  if mask is None:
    return states.mean(axis=1)
  weights = mask.astype(states.dtype)[..., None]
  return (states * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1)


class PooledTextEmbedding(nn.Module):
  """text states [B, L, Dt] (+ mask [B, L]) -> [B, width], added to the AdaLN timestep embeddings.

  The projection starts at zero, so a fresh model computes exactly what it would without it.
  """
  width: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, text_states: jax.Array, text_mask: jax.Array | None) -> jax.Array:
    pooled = masked_mean(text_states.astype(jnp.float32), text_mask)
    return dense(self.width, ("text_embed", "embed"), name="proj", dtype=self.dtype,
                 param_dtype=self.param_dtype, stddev=0.0)(pooled.astype(self.dtype))
