"""uint8 images <-> VQ tokens with a trained autoencoder: what diffusion training and sampling call.

All functions are pure and jit-friendly; ``model`` is static (hashable Flax module), ``variables`` is
``{"params": ...}`` (the ``'vq_stats'`` collection is optional and unused here).

  tokens = jax.jit(encode_tokens, static_argnums=0)(model, variables, images)   # [B, h, w]
  images = jax.jit(decode_tokens, static_argnums=0)(model, variables, tokens)   # uint8
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from vqd_jax.vqvae.autoencoder import VQAutoencoder


def images_to_float(images: jax.Array) -> jax.Array:
  """uint8 ``[B, H, W, 3]`` -> float32 in [-1, 1]."""
  if images.dtype != jnp.uint8:
    raise ValueError(f"Expected uint8 images, got {images.dtype}; convert floats in [0, 1] with "
                     "(x * 255).round().astype(uint8) or pass [-1, 1] floats to the model directly.")
  return images.astype(jnp.float32) / 127.5 - 1.0


def float_to_uint8(images: jax.Array) -> jax.Array:
  """Floats in [-1, 1] -> uint8, rounded and clipped (diffusers' ``/2 + 0.5`` then clip)."""
  return jnp.clip(jnp.round((images.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def _params_only(variables: Mapping[str, Any]) -> dict[str, Any]:
  return {"params": variables["params"]}


def encode_tokens(model: VQAutoencoder, variables: Mapping[str, Any], images: jax.Array
                  ) -> jax.Array:
  """uint8 ``[B, H, W, 3]`` -> int32 codes ``[B, H/f, W/f]``."""
  _, indices, _ = model.apply(_params_only(variables), images_to_float(images), method="encode")
  return indices


def decode_tokens(model: VQAutoencoder, variables: Mapping[str, Any], tokens: jax.Array
                  ) -> jax.Array:
  """int codes ``[B, h, w]`` -> uint8 images ``[B, h*f, w*f, 3]``."""
  images = model.apply(_params_only(variables), tokens.astype(jnp.int32), method="decode_indices")
  return float_to_uint8(images)


def reconstruct(model: VQAutoencoder, variables: Mapping[str, Any], images: jax.Array
                ) -> jax.Array:
  """uint8 ``[B, H, W, 3]`` -> their uint8 reconstructions through the quantizer."""
  recon, _ = model.apply(_params_only(variables), images_to_float(images))
  return float_to_uint8(recon)
