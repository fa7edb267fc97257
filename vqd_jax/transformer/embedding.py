"""The denoiser's input: token embeddings plus learned row and column position embeddings.

Submodule names follow diffusers ``ImagePositionalEmbeddings`` (``emb``, ``height_emb``,
``width_emb``) so that checkpoints convert by name.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.layers.basic import DEFAULT_INIT_STDDEV, Dtype, constant_init, embed
from vqd_jax.transformer import patches


def sincos_table(length: int, features: int, half: int, stddev: float) -> np.ndarray:
  """``[length, features]`` sinusoidal position table in channel half ``half`` (0 or 1), zeros in
  the other half, scaled to RMS ``stddev`` over its nonzero half.

  Row and column tables built for halves 0 and 1 sum to the 2-D sin-cos embedding of MAE/ViT
  (rows in the first half of the channels, columns in the second).
  """
  quarter = features // 4
  if quarter == 0:
    raise ValueError(f"A sin-cos position table needs at least 4 features, got {features}.")
  freqs = 1.0 / 10_000 ** (np.arange(quarter) / quarter)
  angles = np.arange(length)[:, None] * freqs[None]
  table = np.zeros((length, features), np.float64)
  start = half * (features // 2)
  table[:, start:start + quarter] = np.sin(angles)
  table[:, start + quarter:start + 2 * quarter] = np.cos(angles)
  return (table * stddev * np.sqrt(2.0)).astype(np.float32)  # sin/cos have RMS 1/sqrt(2)


class LatentImageEmbedding(nn.Module):
  """Token embedding plus learned row and column embeddings (diffusers ``ImagePositionalEmbeddings``).

  Token ``n`` in raster order sits at row ``n // width`` and column ``n % width``.
  ``position_init``: ``"normal"`` (the official init, N(0, 0.02)) or ``"sincos"`` (the row and
  column tables start as a 2-D sin-cos embedding, see :func:`sincos_table`, and are still
  learned). The latter gives attention spatial structure from the first step; the quickstart
  uses it (not compared against "normal" at equal settings yet).

  With ``patch_size = p > 1`` (see :mod:`vqd_jax.transformer.patches`) each position is a ``p x p``
  block of tokens: ``emb`` holds ``p²`` tables of ``num_embed`` rows, one per slot of the block,
  summed, and the row/column tables cover the ``(height/p) x (width/p)`` grid of blocks.
  """
  num_embed: int  # K + 1 rows: K codes and the [MASK] token (index K).
  height: int  # Token grid, not divided by patch_size.
  width: int
  features: int
  position_init: str = "normal"
  patch_size: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    """tokens: [B, N] int with N = height·width. Returns [B, M, D], M = N / patch_size²."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p = self.patch_size
    gh, gw = patches.check_patch_grid(self.height, self.width, p)
    table = embed(self.num_embed * p * p, self.features, ("vocab", "embed"), name="emb", **kw)
    emb = table(patches.slot_ids(tokens, self.height, self.width, p, self.num_embed)).sum(-2)
    if self.position_init not in ("normal", "sincos"):
      raise ValueError(f"position_init must be 'normal' or 'sincos', got {self.position_init!r}.")
    inits = [None, None]
    if self.position_init == "sincos":
      inits = [constant_init(sincos_table(n, self.features, half, DEFAULT_INIT_STDDEV))
               for half, n in enumerate((gh, gw))]
    rows = embed(gh, self.features, ("length", "embed"), name="height_emb",
                 init=inits[0], **kw)(jnp.arange(gh))
    cols = embed(gw, self.features, ("length", "embed"), name="width_emb",
                 init=inits[1], **kw)(jnp.arange(gw))
    positions = (rows[:, None, :] + cols[None, :, :]).reshape(gh * gw, -1)
    return emb + positions[None]
