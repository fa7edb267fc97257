"""The FID InceptionV3 in Flax: the network FID, KID and the Inception Score are defined with.

This is the TensorFlow FID Inception (``inception-2015-12-05``) as pytorch-fid builds it
(``pytorch_fid.inception.fid_inception_v3``): torchvision's ``Inception3`` with 1008 classes and no
auxiliary classifier, where the average pools of the ``Mixed_5*``, ``Mixed_6b-e`` and ``Mixed_7b``
blocks ignore their zero padding and ``Mixed_7c`` max-pools in its pool branch. Submodule names
follow that state dict (``Mixed_6b.branch7x7_2.conv``, ``Mixed_6b.branch7x7_2.bn``, ``fc``), so
:mod:`vqd_jax.interop.inception` converts its weight file by name.

  inception = load_inception("pt_inception-2015-12-05-6726825d.safetensors")
  pool, logits = inception.features(uint8_images)   # float32 [B, 2048], [B, 1008]

Preprocessing is pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)``: pixels
/ 255, a bilinear resize to 299x299 (half-pixel centres, no antialiasing, as torch's
``F.interpolate(mode="bilinear", align_corners=False)``), then ``2 x - 1``.

Shapes: B batch, H x W input images, channels-last throughout (NHWC).
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SIDE = 299
POOL_WIDTH = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3

Pair = int | tuple[int, int]


def _pair(value: Pair) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


class FrozenBatchNorm(nn.Module):
  """BatchNorm at inference: ``(x - running_mean) / sqrt(running_var + eps) * scale + bias``.

  The running statistics are stored as params (the network is never trained here), named after
  torch's ``running_mean`` / ``running_var`` buffers; ``scale`` and ``bias`` are its ``weight`` and
  ``bias``. ``x``: ``[..., C]``.
  """
  epsilon: float = BN_EPS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = self.param("running_mean", nn.initializers.zeros, (c,), jnp.float32)
    var = self.param("running_var", nn.initializers.ones, (c,), jnp.float32)
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class BasicConv2d(nn.Module):
  """Bias-free conv, frozen BatchNorm (eps 1e-3), ReLU: ``[B, H, W, Cin] -> [B, H', W', features]``.

  ``padding`` is torch's symmetric zero padding per spatial side.
  """
  features: int
  kernel: Pair = 1
  stride: Pair = 1
  padding: Pair = 0
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad_h, pad_w = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel), strides=_pair(self.stride),
                padding=((pad_h, pad_h), (pad_w, pad_w)), use_bias=False,
                precision=self.precision, name="conv")(x)
    return nn.relu(FrozenBatchNorm(name="bn")(x))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3, stride 1, padding 1, averaging over the in-image pixels only (TensorFlow's pool)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int = 1) -> jax.Array:
  """3x3 max pool; stride 1 keeps the size (padding 1), stride 2 is unpadded ("VALID")."""
  padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class _Block(nn.Module):
  """Base of the Inception blocks: ``self.conv(name, features, kernel, stride, padding)``."""
  precision: Any = jax.lax.Precision.HIGHEST

  def conv(self, name: str, features: int, kernel: Pair = 1, stride: Pair = 1,
           padding: Pair = 0) -> BasicConv2d:
    return BasicConv2d(features, kernel, stride, padding, precision=self.precision, name=name)


class InceptionA(_Block):
  """35x35 block (``Mixed_5b-d``): ``[B, 35, 35, C] -> [B, 35, 35, 224 + pool_features]``."""
  pool_features: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.conv("branch1x1", 64)(x)
    b5 = self.conv("branch5x5_2", 64, 5, padding=2)(self.conv("branch5x5_1", 48)(x))
    b3 = self.conv("branch3x3dbl_1", 64)(x)
    b3 = self.conv("branch3x3dbl_2", 96, 3, padding=1)(b3)
    b3 = self.conv("branch3x3dbl_3", 96, 3, padding=1)(b3)
    bp = self.conv("branch_pool", self.pool_features)(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  """Grid reduction 35 -> 17 (``Mixed_6a``): ``[B, 35, 35, C] -> [B, 17, 17, 480 + C]``."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.conv("branch3x3", 384, 3, stride=2)(x)
    bd = self.conv("branch3x3dbl_1", 64)(x)
    bd = self.conv("branch3x3dbl_2", 96, 3, padding=1)(bd)
    bd = self.conv("branch3x3dbl_3", 96, 3, stride=2)(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionC(_Block):
  """17x17 block, factorised 7x7 convs (``Mixed_6b-e``): ``[B, 17, 17, C] -> [B, 17, 17, 768]``."""
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7, row, col = self.channels_7x7, dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1),
                                                                               padding=(3, 0))
    b1 = self.conv("branch1x1", 192)(x)
    b7 = self.conv("branch7x7_1", c7)(x)
    b7 = self.conv("branch7x7_2", c7, **row)(b7)
    b7 = self.conv("branch7x7_3", 192, **col)(b7)
    bd = self.conv("branch7x7dbl_1", c7)(x)
    for i, (width, shape) in enumerate([(c7, col), (c7, row), (c7, col), (192, row)], start=2):
      bd = self.conv(f"branch7x7dbl_{i}", width, **shape)(bd)
    bp = self.conv("branch_pool", 192)(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  """Grid reduction 17 -> 8 (``Mixed_7a``): ``[B, 17, 17, C] -> [B, 8, 8, 512 + C]``."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.conv("branch3x3_2", 320, 3, stride=2)(self.conv("branch3x3_1", 192)(x))
    b7 = self.conv("branch7x7x3_1", 192)(x)
    b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
    b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
    b7 = self.conv("branch7x7x3_4", 192, 3, stride=2)(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(_Block):
  """8x8 block with split 1x3 / 3x1 convs (``Mixed_7b``, ``Mixed_7c``): ``[B, 8, 8, C] ->
  [B, 8, 8, 2048]``. ``pool`` is the pool branch's: ``"avg"`` (padding excluded) or ``"max"``."""
  pool: str = "avg"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
    b1 = self.conv("branch1x1", 320)(x)
    b3 = self.conv("branch3x3_1", 384)(x)
    b3 = [self.conv("branch3x3_2a", 384, **row)(b3), self.conv("branch3x3_2b", 384, **col)(b3)]
    bd = self.conv("branch3x3dbl_1", 448)(x)
    bd = self.conv("branch3x3dbl_2", 384, 3, padding=1)(bd)
    bd = [self.conv("branch3x3dbl_3a", 384, **row)(bd),
          self.conv("branch3x3dbl_3b", 384, **col)(bd)]
    pooled = {"avg": _avg_pool_3x3, "max": _max_pool_3x3}[self.pool](x)
    bp = self.conv("branch_pool", 192)(pooled)
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """The FID InceptionV3: pixels ``[B, H, W, 3]`` in ``[-1, 1]`` (299x299 for the standard
  features) -> ``(pool [B, 2048], logits [B, 1008])``.

  ``pool`` is the global average of ``Mixed_7c`` (pytorch-fid's 2048-d block 3, the FID/KID
  features); ``logits`` is ``fc`` on it (dropout is inactive at inference), for the Inception Score.
  """
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    p = dict(precision=self.precision)
    x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3", **p)(x)      # [B, 149, 149, 32]
    x = BasicConv2d(32, 3, name="Conv2d_2a_3x3", **p)(x)                # [B, 147, 147, 32]
    x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3", **p)(x)     # [B, 147, 147, 64]
    x = _max_pool_3x3(x, stride=2)                                       # [B, 73, 73, 64]
    x = BasicConv2d(80, 1, name="Conv2d_3b_1x1", **p)(x)                # [B, 73, 73, 80]
    x = BasicConv2d(192, 3, name="Conv2d_4a_3x3", **p)(x)               # [B, 71, 71, 192]
    x = _max_pool_3x3(x, stride=2)                                       # [B, 35, 35, 192]
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool_features=pool_features, name=name, **p)(x)     # [B, 35, 35, 288]
    x = InceptionB(name="Mixed_6a", **p)(x)                              # [B, 17, 17, 768]
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(channels_7x7=c7, name=name, **p)(x)                 # [B, 17, 17, 768]
    x = InceptionD(name="Mixed_7a", **p)(x)                              # [B, 8, 8, 1280]
    x = InceptionE(pool="avg", name="Mixed_7b", **p)(x)                  # [B, 8, 8, 2048]
    x = InceptionE(pool="max", name="Mixed_7c", **p)(x)                  # [B, 8, 8, 2048]
    pool = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, name="fc", **p)(pool)
    return pool, logits


def resize_bilinear(images: jax.Array, height: int, width: int) -> jax.Array:
  """``[B, H, W, C] -> [B, height, width, C]`` as torch's ``F.interpolate(mode="bilinear",
  align_corners=False)``: half-pixel centres, edge samples clamped, and no antialiasing (a
  downscale reads two source pixels per axis, not a widened filter)."""
  shape = (images.shape[0], height, width, images.shape[-1])
  return jax.image.resize(images, shape, method="linear", antialias=False)


def fid_preprocess(images: jax.Array) -> jax.Array:
  """uint8 ``[B, H, W, 3]`` (or floats in ``[0, 1]``) -> float32 ``[B, 299, 299, 3]`` in
  ``[-1, 1]``, as pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)``."""
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  return 2.0 * resize_bilinear(x, SIDE, SIDE) - 1.0


_preprocess = jax.jit(fid_preprocess)


def _apply(module: FIDInceptionV3, params: Any, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
  return module.apply({"params": params}, pixels)


# One compilation per (network, batch size): the module is static, the weights are arguments, so
# every InceptionFeatures shares it.
_network = jax.jit(_apply, static_argnums=0)


def check_images(images: np.ndarray) -> None:
  """A clear ValueError unless ``images`` is ``[B, H, W, 3]`` uint8 (or floating, in ``[0, 1]``)."""
  if (images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0
      or not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating))):
    raise ValueError(f"Inception features need uint8 images [batch, height, width, 3] (channels-"
                     f"last RGB, any size, batch >= 1; floats in [0, 1] also work); got "
                     f"{images.dtype} {images.shape}.")


class InceptionFeatures:
  """The FID InceptionV3 with its weights behind one call: images -> ``(pool, logits)``.

  Attributes:
    module: the :class:`FIDInceptionV3`.
    params: its float32 weights (the pytorch-fid state dict, converted).
  """

  def __init__(self, params: Any, precision: Any = jax.lax.Precision.HIGHEST):
    self.module = FIDInceptionV3(precision=precision)
    self.params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)

  def features(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[B, H, W, 3]`` (any size; or floats in ``[0, 1]``) -> float32 numpy
    ``(pool [B, 2048], logits [B, 1008])``."""
    images = np.asarray(images)
    check_images(images)
    pool, logits = _network(self.module, self.params, _preprocess(jnp.asarray(images)))
    return np.asarray(pool, np.float32), np.asarray(logits, np.float32)

  __call__ = features


def load_inception(path: str | os.PathLike) -> InceptionFeatures:
  """The FID InceptionV3 from pytorch-fid's weight file (``.safetensors``, or ``.pth``/``.pt`` read
  with ``torch.load(weights_only=True)``); see :func:`vqd_jax.interop.inception.load_inception`."""
  from vqd_jax.interop import inception  # pylint: disable=import-outside-toplevel
  return inception.load_inception(path)

