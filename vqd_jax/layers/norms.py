"""Adaptive LayerNorm: a LayerNorm modulated by a learned per-timestep embedding."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqd_jax.layers.basic import Dtype, dense, embed, layer_norm


class AdaLayerNorm(nn.Module):
  """LayerNorm (no affine, eps 1e-5) modulated by a learned per-timestep embedding.

  ``AdaLN(h, t) = LN(h)·(1 + scale) + shift`` with ``[scale, shift] = linear(silu(emb[t] + cond))``;
  the first half of the linear output is the scale (diffusers ``AdaLayerNorm`` with
  ``chunk_dim=0``).
  """
  num_embeddings: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, t: jax.Array, cond: jax.Array | None = None) -> jax.Array:
    """h: [B, N, D]; t: [B] int; cond: optional [B, D] added to the timestep embedding (e.g. the
    projected ``global_cond`` of the denoiser). Returns [B, N, D]."""
    width = h.shape[-1]
    temb = embed(self.num_embeddings, width, ("timestep", "embed"), name="emb",
                 dtype=self.dtype, param_dtype=self.param_dtype)(t)
    if cond is not None:
      temb = temb + cond.astype(temb.dtype)
    # The output axis packs [scale, shift]; sharding it would split the two halves: leave it None.
    temb = dense(2 * width, ("embed", None), name="linear", dtype=self.dtype,
                 param_dtype=self.param_dtype)(nn.silu(temb))
    scale, shift = jnp.split(temb[:, None, :], 2, axis=-1)
    normed = layer_norm(name="norm", affine=False, dtype=self.dtype,
                        param_dtype=self.param_dtype)(h)
    return normed * (1 + scale) + shift
