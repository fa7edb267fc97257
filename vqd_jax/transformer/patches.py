"""Token patches: one transformer position per ``p x p`` block of image tokens.

With ``patch_size = p > 1`` the denoiser runs over ``(H/p) x (W/p)`` positions instead of ``H x W``
(DiT's patch size, applied to discrete tokens): position ``m`` embeds the ``p²`` tokens of its block
(one embedding table per slot of the block, summed, which is a linear map of their one-hot codes),
and its output head predicts ``p²`` independent distributions over the K codes. The diffusion is
unchanged: every token keeps its own x_t, its own log p(x0 | x_t) and its own posterior, so losses and
samplers do not know about patches. The body costs about ``p²`` times less per image, which buys
examples per second on small machines; ``p = 1`` is the official architecture and the only layout
that converts to and from the public checkpoints.

Slots are numbered in raster order inside a block: slot ``s`` is row ``s // p``, column ``s % p``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_patch_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
  """``(H/p, W/p)``, or a ValueError when ``p`` does not divide the token grid."""
  if patch_size < 1:
    raise ValueError(f"patch_size must be >= 1, got {patch_size}.")
  if height % patch_size or width % patch_size:
    raise ValueError(f"patch_size {patch_size} does not divide the {height}x{width} token grid; "
                     "use a divisor of both sides (1 = one position per token).")
  return height // patch_size, width // patch_size


def to_patches(x: jax.Array, height: int, width: int, patch_size: int) -> jax.Array:
  """``[B, H·W, ...]`` in raster order -> ``[B, (H/p)·(W/p), p², ...]`` (blocks in raster order)."""
  p = patch_size
  gh, gw = check_patch_grid(height, width, p)
  rest = x.shape[2:]
  x = x.reshape(x.shape[0], gh, p, gw, p, *rest)
  x = jnp.moveaxis(x, 3, 2)  # [B, gh, gw, p, p, ...]
  return x.reshape(x.shape[0], gh * gw, p * p, *rest)


def from_patches(x: jax.Array, height: int, width: int, patch_size: int) -> jax.Array:
  """Inverse of :func:`to_patches`: ``[B, (H/p)·(W/p), p², ...]`` -> ``[B, H·W, ...]``."""
  p = patch_size
  gh, gw = check_patch_grid(height, width, p)
  rest = x.shape[3:]
  x = x.reshape(x.shape[0], gh, gw, p, p, *rest)
  x = jnp.moveaxis(x, 2, 3)  # [B, gh, p, gw, p, ...]
  return x.reshape(x.shape[0], height * width, *rest)


def slot_ids(tokens: jax.Array, height: int, width: int, patch_size: int,
             num_embed: int) -> jax.Array:
  """``[B, H·W]`` ids in ``[0, num_embed)`` -> ``[B, M, p²]`` rows of a ``[p²·num_embed]`` table.

  Slot ``s`` of every block reads its own ``num_embed`` rows, so one embedding lookup (and one
  ``nn.Embed`` parameter) serves all slots. An id outside ``[0, num_embed)`` maps past the end of
  the table (which reads as NaN) rather than into a neighbouring slot's rows.
  """
  blocks = to_patches(tokens, height, width, patch_size)
  slots = patch_size * patch_size
  offsets = jnp.arange(slots, dtype=blocks.dtype) * num_embed
  valid = (blocks >= 0) & (blocks < num_embed)
  return jnp.where(valid, blocks + offsets, slots * num_embed)
