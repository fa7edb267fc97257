"""Building blocks of the VQ autoencoder, named like diffusers' so checkpoints convert by renaming.

Images and feature maps are NHWC. Every block follows diffusers' ``VQModel`` numerics: GroupNorm with
eps 1e-6, SiLU, single-head spatial self-attention with a residual connection, downsampling by
padding (0, 1, 0, 1) then a stride-2 3x3 convolution with no padding, and upsampling by nearest x2
then a 3x3 convolution (transposed convolutions are very slow on XLA's CPU backend).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqd_jax.layers import Attention

Dtype = Any
Axes = tuple[str | None, ...]

CONV_AXES: Axes = (None, None, "conv_in", "conv_out")


def conv(features: int, kernel_size: int, name: str, *, strides: int = 1,
         padding: str | tuple = "SAME", axes: Axes = CONV_AXES, use_bias: bool = True,
         dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> nn.Conv:
  """A square-kernel ``nn.Conv`` whose kernel ``[k, k, in, out]`` and bias carry logical axes.

  ``padding='SAME'`` equals torch's ``padding=k//2`` for stride 1 (the only place it is used).
  """
  return nn.Conv(
      features, (kernel_size, kernel_size), strides=(strides, strides), padding=padding,
      use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)))


def layer_norm(name: str, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
               ) -> nn.LayerNorm:
  """LayerNorm(eps 1e-6) over channels, per position, with logically named scale and bias."""
  return nn.LayerNorm(
      epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)))


def group_norm(num_groups: int, channels: int, name: str, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32) -> nn.GroupNorm:
  """GroupNorm(eps 1e-6) over ``channels``; fails early with a readable message if indivisible."""
  if channels % num_groups:
    raise ValueError(f"norm_num_groups={num_groups} does not divide the {channels} channels of "
                     f"{name!r}: choose block_out_channels that are multiples of norm_num_groups.")
  return nn.GroupNorm(
      num_groups=num_groups, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)))


class ResnetBlock(nn.Module):
  """norm1 -> SiLU -> conv1 -> norm2 -> SiLU -> conv2, plus a (1x1-projected) shortcut.

  ``[B, H, W, C_in] -> [B, H, W, out_channels]``.
  """
  out_channels: int
  norm_num_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    in_channels = x.shape[-1]
    h = nn.silu(group_norm(self.norm_num_groups, in_channels, "norm1", **kw)(x))
    h = conv(self.out_channels, 3, "conv1", **kw)(h)
    h = nn.silu(group_norm(self.norm_num_groups, self.out_channels, "norm2", **kw)(h))
    h = conv(self.out_channels, 3, "conv2", **kw)(h)
    if in_channels != self.out_channels:
      x = conv(self.out_channels, 1, "conv_shortcut", **kw)(x)
    return x + h


def single_head_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          key_mask: jax.Array | None = None, bias: jax.Array | None = None, *,
                          mask: jax.Array | None = None) -> jax.Array:
  """softmax(QKᵀ/√C) V for one head: query, key, value [B, N, 1, C] -> [B, N, 1, C].

  The autoencoder's own rounding (product scaled after it, logits in the compute dtype, one head
  squeezed out), kept so that trained autoencoders reproduce their outputs bit for bit. Positions
  are never masked here, so masks and biases are refused.
  """
  if key_mask is not None or bias is not None or mask is not None:
    raise ValueError("The autoencoder's spatial attention takes no masks or biases.")
  if query.shape[2] != 1:
    raise ValueError(f"single_head_attention takes one head, got {query.shape[2]}.")
  q, k, v = query[:, :, 0], key[:, :, 0], value[:, :, 0]
  logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) * (q.shape[-1] ** -0.5)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bqk,bkc->bqc", weights, v)[:, :, None]


class SpatialSelfAttention(nn.Module):
  """Single-head self-attention over the ``H*W`` positions with a residual: ``[B, H, W, C]``.

  diffusers gives VAE attention one head of width C (``attention_head_dim = channels``), so the
  logits are scaled by ``C ** -0.5``. The projections ``to_q``/``to_k``/``to_v``/``to_out_0`` sit
  directly under this module, next to ``group_norm``, as in the diffusers ``VQModel`` state dict.
  """
  norm_num_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tokens = group_norm(self.norm_num_groups, c, "group_norm", **kw)(x).reshape(b, h * w, c)
    attention = Attention(1, c, embed_axis="conv_in", kv_axis="conv_in", heads_axis="conv_out",
                          kernel_init=nn.initializers.lecun_normal(),
                          attention_fn=single_head_attention, name="attention", **kw)
    nn.share_scope(self, attention)  # Keeps the projections' names those of the state dict.
    return x + attention(tokens).reshape(b, h, w, c)


class Downsample(nn.Module):
  """Halves H and W: pad one pixel at the bottom/right, then a 3x3 stride-2 VALID conv.

  Flax's ``'SAME'`` would pad top/left too for stride 2 and differ from the torch checkpoints.
  """
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return conv(x.shape[-1], 3, "conv", strides=2, padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype)(x)


def upsample_nearest(x: jax.Array) -> jax.Array:
  """``[B, H, W, C] -> [B, 2H, 2W, C]`` by repeating every pixel 2x2."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


class Upsample(nn.Module):
  """Doubles H and W: nearest-neighbour x2 then a 3x3 conv."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return conv(x.shape[-1], 3, "conv", dtype=self.dtype,
                param_dtype=self.param_dtype)(upsample_nearest(x))


class MidBlock(nn.Module):
  """resnets_0 -> (attentions_0) -> resnets_1 at the lowest resolution, channels unchanged."""
  norm_num_groups: int = 32
  attention: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(norm_num_groups=self.norm_num_groups, dtype=self.dtype, param_dtype=self.param_dtype)
    c = x.shape[-1]
    x = ResnetBlock(c, name="resnets_0", **kw)(x)
    if self.attention:
      x = SpatialSelfAttention(name="attentions_0", **kw)(x)
    return ResnetBlock(c, name="resnets_1", **kw)(x)


class DownBlock(nn.Module):
  """``resnets_j`` (each optionally followed by ``attentions_j``) then ``downsamplers_0``.

  ``[B, H, W, C_in] -> [B, H/2, W/2, out_channels]`` (no halving when ``downsample`` is False).
  """
  out_channels: int
  num_layers: int
  attention: bool = False
  downsample: bool = True
  norm_num_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for j in range(self.num_layers):
      x = ResnetBlock(self.out_channels, self.norm_num_groups, name=f"resnets_{j}", **kw)(x)
      if self.attention:
        x = SpatialSelfAttention(self.norm_num_groups, name=f"attentions_{j}", **kw)(x)
    if self.downsample:
      x = Downsample(name="downsamplers_0", **kw)(x)
    return x


class UpBlock(nn.Module):
  """``resnets_j`` (each optionally followed by ``attentions_j``) then ``upsamplers_0``.

  ``[B, H, W, C_in] -> [B, 2H, 2W, out_channels]`` (no doubling when ``upsample`` is False).
  """
  out_channels: int
  num_layers: int
  attention: bool = False
  upsample: bool = True
  norm_num_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for j in range(self.num_layers):
      x = ResnetBlock(self.out_channels, self.norm_num_groups, name=f"resnets_{j}", **kw)(x)
      if self.attention:
        x = SpatialSelfAttention(self.norm_num_groups, name=f"attentions_{j}", **kw)(x)
    if self.upsample:
      x = Upsample(name="upsamplers_0", **kw)(x)
    return x
