"""LPIPS perceptual distance (Zhang et al. 2018) with VGG16 features, for the optional perceptual loss.

Weights are never downloaded: pass local files. Accepted layouts (torch ``.pth``/``.bin`` or
``.safetensors``), in one file or split over two:

* VGG16 convolutions as torchvision names them, ``features.{i}.weight/bias`` (``vgg16-*.pth``), or as
  the ``lpips`` package's full state dict does, ``net.slice{s}.{i}.weight/bias``;
* the linear heads, ``lin{k}.model.1.weight`` ``[1, C, 1, 1]`` (the ``lpips`` package's
  ``weights/v0.1/vgg.pth``, also used by taming-transformers).
"""

from __future__ import annotations

import os
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

_RENAMES = ((r"^net\.slice\d+\.(\d+)\.", r"vgg.features.\1."),
            (r"^features\.(\d+)\.", r"vgg.features.\1."),
            (r"^lin(\d)\.model\.1\.", r"lin\1."))
_IGNORE = (r"scaling_layer", r"^classifier\.")


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


def load_lpips_params(*paths: str | os.PathLike) -> dict[str, Any]:
  """LPIPS params from one or more local weight files together holding the VGG16 trunk and heads.

  Raises:
    FileNotFoundError: a path does not exist.
    ValueError: weights are missing (e.g. only the heads file was given), naming the missing ones.
  """
  from vqd_jax.interop import state_dict as sd_lib  # pylint: disable=import-outside-toplevel
  merged: dict[str, np.ndarray] = {}
  for path in paths:
    merged.update(sd_lib.load_state_dict(path))
  template = jax.eval_shape(
      lambda: LPIPS().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 32, 3))))
  params = sd_lib.state_dict_to_params(merged, template["params"], rules=_RENAMES, ignore=_IGNORE,
                                       what=f"LPIPS weights {[os.fspath(p) for p in paths]}")
  return jax.tree.map(jnp.asarray, params)
