"""A trained VQ autoencoder, frozen: its model and parameters, with jitted encode and decode.

  vq = load_autoencoder("runs/quickstart/vqvae")          # vqd_jax.inference.loading
  codes = vq.encode(images)                               # uint8 [B, H, W, 3] -> int32 [B, h, w]
  images = vq.decode(codes)                               # [B, h, w] or [B, h*w] -> uint8 images
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax import vqvae

_encode = jax.jit(vqvae.encode_tokens, static_argnums=0)
_decode = jax.jit(vqvae.decode_tokens, static_argnums=0)


@dataclasses.dataclass(frozen=True, eq=False)
class FrozenAutoencoder:
  """``model`` (a ``VQAutoencoder``) and its ``params`` (the plain ``params`` collection)."""
  model: vqvae.VQAutoencoder
  params: Any

  @property
  def num_codes(self) -> int:
    return int(self.model.num_vq_embeddings)

  @property
  def downsample_factor(self) -> int:
    return int(self.model.downsample_factor)

  @property
  def codebook(self) -> np.ndarray:
    """The code vectors ``[K, D]`` float32."""
    return np.asarray(self.params["quantize"]["embedding"], np.float32)

  @functools.cached_property
  def fingerprint(self) -> str:
    """16 hex digits of SHA-256 over every parameter (names, dtypes, shapes, bytes): token records
    carry their autoencoder's, so a run can tell records of another autoencoder."""
    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(self.params)[0],
                             key=lambda item: jax.tree_util.keystr(item[0])):
      array = np.ascontiguousarray(np.asarray(leaf))
      digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
      digest.update(array.tobytes())
    return digest.hexdigest()[:16]

  def token_grid(self, image_size: int) -> tuple[int, int]:
    """``(h, w)`` of the codes of ``image_size`` x ``image_size`` images."""
    f = self.downsample_factor
    return image_size // f, image_size // f

  def encode(self, images: Any) -> jax.Array:
    """uint8 ``[B, H, W, 3]`` -> int32 codes ``[B, H/f, W/f]``."""
    return _encode(self.model, {"params": self.params}, jnp.asarray(images))

  def decode(self, tokens: Any) -> jax.Array:
    """Codes ``[B, h, w]`` (or square ``[B, N]`` in raster order) -> uint8 ``[B, H, W, 3]``."""
    tokens = jnp.asarray(tokens)
    if tokens.ndim == 2:
      side = math.isqrt(tokens.shape[1])
      if side * side != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} tokens per image are not a square grid; pass "
                         "[B, h, w] codes.")
      tokens = tokens.reshape(tokens.shape[0], side, side)
    return _decode(self.model, {"params": self.params}, tokens)
