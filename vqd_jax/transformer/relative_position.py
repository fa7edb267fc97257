"""Learned 2-D relative position bias for the denoiser's self-attention (Swin / T5 style).

Each head adds ``table[head, dy, dx]`` to the attention logit of query position ``(y, x)`` and key
position ``(y + dy, x + dx)``. The absolute row/column embeddings let a model work out where two
positions lie relative to each other only through learned products of both; the table states it
directly, so a head can attend "to whatever is on my left" from the first step. That is what a
caption such as "a red circle to the left of a blue square" asks of the image tokens.
Not part of any public checkpoint layout (``relative_position_bias=False`` there).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

Dtype = Any


def relative_offset_index(height: int, width: int) -> np.ndarray:
  """int ``[M, M]``, M = height·width in raster order: index of the offset (key - query) into a
  flattened ``[2·height - 1, 2·width - 1]`` table (row offset major)."""
  y, x = np.divmod(np.arange(height * width), width)
  dy = y[None, :] - y[:, None] + height - 1
  dx = x[None, :] - x[:, None] + width - 1
  return (dy * (2 * width - 1) + dx).astype(np.int32)


class RelativePositionBias(nn.Module):
  """``[1, num_heads, M, M]`` additive self-attention bias over a ``height x width`` grid.

  The table ``[num_heads, 2·height - 1, 2·width - 1]`` starts at zero, so a fresh model attends as
  if it were absent.
  """
  num_heads: int
  height: int
  width: int
  param_dtype: Dtype = np.float32

  @nn.compact
  def __call__(self) -> jax.Array:
    table = self.param("table", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                             (None, None, None)),
                       (self.num_heads, 2 * self.height - 1, 2 * self.width - 1), self.param_dtype)
    index = relative_offset_index(self.height, self.width)
    return table.reshape(self.num_heads, -1)[:, index][None]
