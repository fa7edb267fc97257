"""LPIPS perceptual distance (Zhang et al. 2018) with VGG16 features, for the optional perceptual loss.

Weights are never downloaded: :func:`vqd_jax.interop.lpips.load_lpips_params` reads local files.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# (torchvision index, out channels) of VGG16's 13 convolutions; a 2x2 max-pool precedes the first
# conv of every stage after the first.
VGG16_CONVS = ((0, 64), (2, 64), (5, 128), (7, 128), (10, 256), (12, 256), (14, 256),
               (17, 512), (19, 512), (21, 512), (24, 512), (26, 512), (28, 512))
POOL_BEFORE = (5, 10, 17, 24)
# LPIPS compares the ReLU outputs after these convs (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
TAPS = (2, 7, 14, 21, 28)
# The lpips package's ScalingLayer, for inputs in [-1, 1].
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)


class VGG16Features(nn.Module):
  """The five LPIPS taps of VGG16's convolutional trunk, ``[B, H, W, 3]`` -> list of NHWC maps."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    taps = []
    for index, channels in VGG16_CONVS:
      if index in POOL_BEFORE:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = nn.relu(nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                          name=f"features_{index}")(x))
      if index in TAPS:
        taps.append(x)
    return taps


class LPIPS(nn.Module):
  """Perceptual distance ``[B]`` between images ``[B, H, W, 3]`` in [-1, 1] (H, W >= 16)."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    def scaled(images):
      return (images.astype(jnp.float32) - SHIFT) / SCALE

    vgg = VGG16Features(dtype=self.dtype, name="vgg")
    total = 0.0
    for k, (fx, fy) in enumerate(zip(vgg(scaled(x)), vgg(scaled(y)))):
      fx, fy = fx.astype(jnp.float32), fy.astype(jnp.float32)
      nx = fx / (jnp.sqrt(jnp.sum(fx ** 2, axis=-1, keepdims=True)) + 1e-10)
      ny = fy / (jnp.sqrt(jnp.sum(fy ** 2, axis=-1, keepdims=True)) + 1e-10)
      head = nn.Conv(1, (1, 1), use_bias=False, name=f"lin{k}")((nx - ny) ** 2)
      total = total + jnp.mean(head, axis=(1, 2, 3))
    return total
