"""The VQGAN-style autoencoder with diffusers ``VQModel`` submodule names.

``encoder -> quant_conv -> quantize -> post_quant_conv -> decoder``; images are NHWC floats in
``[-1, 1]``. A ``len(block_out_channels) - 1``-fold halving gives the token grid: 32x32 images with
three blocks become 8x8 tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqd_jax.vqvae import layers
from vqd_jax.vqvae.quantizer import VectorQuantizer

Dtype = Any
# The RGB side of the network is never sharded: 3 channels do not divide a mesh axis.
RGB_IN_AXES = (None, None, None, "conv_out")
RGB_OUT_AXES = (None, None, "conv_in", None)


class Encoder(nn.Module):
  """``[B, H, W, 3] -> [B, H/f, W/f, latent_channels]`` with ``f = 2 ** (len(blocks) - 1)``."""
  block_out_channels: Sequence[int]
  layers_per_block: int
  down_attention: Sequence[bool]
  mid_block_attention: bool
  latent_channels: int
  norm_num_groups: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    nkw = dict(norm_num_groups=self.norm_num_groups, **kw)
    h = layers.conv(self.block_out_channels[0], 3, "conv_in", axes=RGB_IN_AXES, **kw)(x)
    last = len(self.block_out_channels) - 1
    for i, channels in enumerate(self.block_out_channels):
      h = layers.DownBlock(channels, self.layers_per_block, attention=self.down_attention[i],
                           downsample=i != last, name=f"down_blocks_{i}", **nkw)(h)
    h = layers.MidBlock(attention=self.mid_block_attention, name="mid_block", **nkw)(h)
    h = nn.silu(layers.group_norm(self.norm_num_groups, h.shape[-1], "conv_norm_out", **kw)(h))
    return layers.conv(self.latent_channels, 3, "conv_out", **kw)(h)


class PatchEncoder(nn.Module):
  """``[B, h, w, p*p*3] -> [B, h, w, latent_channels]``, each position from its own patch only.

  A residual MLP applied per patch (1x1 convolutions, per-position LayerNorm): no spatial kernel
  and no norm statistics shared across the image, so identical patches always get the same code.
  On data with flat backgrounds (the shapes quickstart) the background then becomes one token
  instead of a context-dependent spread over hundreds: a far simpler token distribution.
  """
  width: int
  num_layers: int
  latent_channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.conv(self.width, 1, "conv_in", axes=RGB_IN_AXES, **kw)(x)
    for i in range(self.num_layers):
      y = layers.layer_norm(f"norm_{i}", **kw)(h)
      y = layers.conv(self.width * 2, 1, f"fc1_{i}", **kw)(nn.silu(y))
      h = h + layers.conv(self.width, 1, f"fc2_{i}", **kw)(nn.silu(y))
    h = nn.silu(layers.layer_norm("norm_out", **kw)(h))
    return layers.conv(self.latent_channels, 1, "conv_out", **kw)(h)


class Decoder(nn.Module):
  """``[B, h, w, latent_channels] -> [B, h*f, w*f, 3]``; up blocks run from the widest channels."""
  block_out_channels: Sequence[int]
  layers_per_block: int
  up_attention: Sequence[bool]
  mid_block_attention: bool
  norm_num_groups: int
  out_channels: int = 3
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, return_features: bool = False):
    """Returns images, or ``(images, features)`` where ``features`` ``[B, H, W, C0]`` is the input of
    ``conv_out`` (the adaptive GAN weight differentiates through that last layer)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    nkw = dict(norm_num_groups=self.norm_num_groups, **kw)
    widths = list(reversed(self.block_out_channels))
    h = layers.conv(widths[0], 3, "conv_in", **kw)(z)
    h = layers.MidBlock(attention=self.mid_block_attention, name="mid_block", **nkw)(h)
    for i, channels in enumerate(widths):
      h = layers.UpBlock(channels, self.layers_per_block + 1, attention=self.up_attention[i],
                         upsample=i != len(widths) - 1, name=f"up_blocks_{i}", **nkw)(h)
    h = nn.silu(layers.group_norm(self.norm_num_groups, h.shape[-1], "conv_norm_out", **kw)(h))
    out = layers.conv(self.out_channels, 3, "conv_out", axes=RGB_OUT_AXES, **kw)(h)
    return (out, h) if return_features else out


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
  """``[B, H, W, C]`` -> ``[B, H/p, W/p, p*p*C]``."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
  """The inverse of :func:`space_to_depth`."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, p, p, c // (p * p)).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c // (p * p))


class VQAutoencoder(nn.Module):
  """VQ-VAE / VQGAN autoencoder (diffusers ``VQModel`` layout and numerics).

  Attributes:
    block_out_channels: channels per resolution level; ``len - 1`` downsamplings.
    layers_per_block: resnets per encoder block (decoder blocks get one more, as in diffusers).
    down_attention: per encoder block, whether its resnets are followed by self-attention.
    up_attention: per decoder block (widest first); None mirrors ``down_attention``.
    mid_block_attention: attention in both mid blocks.
    latent_channels: encoder output / decoder input channels.
    vq_embed_dim: code width D (``quant_conv`` maps latent_channels -> D).
    num_vq_embeddings: codebook size K.
    norm_num_groups: GroupNorm groups.
    patch_size: p > 1 folds p x p pixel patches into channels before ``conv_in`` and unfolds the
      decoder output (a vqd_jax extension; diffusers' VQModel is p = 1). The convolutions then
      run at 1/p of the resolution: on CPUs, where XLA's convolutions on few channels and many
      pixels are slow, this makes small autoencoders several times faster to train.
    local_encoder: with ``patch_size > 1``, encode each patch on its own (:class:`PatchEncoder`,
      width ``block_out_channels[-1]``, ``layers_per_block + 1`` residual MLP layers) instead of
      the convolutional encoder; the decoder is unchanged (a vqd_jax extension).
    codebook_ema, ema_decay, usage_decay: see :class:`VectorQuantizer`.
  """
  block_out_channels: Sequence[int] = (64, 128, 128)
  layers_per_block: int = 1
  down_attention: Sequence[bool] | None = None
  up_attention: Sequence[bool] | None = None
  mid_block_attention: bool = True
  latent_channels: int = 64
  vq_embed_dim: int = 64
  num_vq_embeddings: int = 512
  norm_num_groups: int = 32
  in_channels: int = 3
  out_channels: int = 3
  patch_size: int = 1
  local_encoder: bool = False
  codebook_ema: bool = False
  ema_decay: float = 0.99
  usage_decay: float = 0.99
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def downsample_factor(self) -> int:
    return self.patch_size * 2 ** (len(self.block_out_channels) - 1)

  def to_patches(self, images: jax.Array) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B, H/p, W/p, p*p*C]`` (space-to-depth; identity for p = 1)."""
    return space_to_depth(images, self.patch_size)

  def setup(self):
    n = len(self.block_out_channels)
    down = tuple(self.down_attention) if self.down_attention is not None else (False,) * n
    up = tuple(self.up_attention) if self.up_attention is not None else tuple(reversed(down))
    if len(down) != n or len(up) != n:
      raise ValueError(f"down_attention {down} and up_attention {up} need one entry per block of "
                       f"block_out_channels {tuple(self.block_out_channels)}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    common = dict(block_out_channels=tuple(self.block_out_channels),
                  layers_per_block=self.layers_per_block, norm_num_groups=self.norm_num_groups,
                  mid_block_attention=self.mid_block_attention, **kw)
    if self.local_encoder:
      if self.patch_size < 2 or n != 1:
        raise ValueError("local_encoder=True needs patch_size > 1 and a single block "
                         f"(block_out_channels of length 1), got patch_size={self.patch_size}, "
                         f"block_out_channels={tuple(self.block_out_channels)}.")
      self.encoder = PatchEncoder(self.block_out_channels[-1], self.layers_per_block + 1,
                                  self.latent_channels, **kw)
    else:
      self.encoder = Encoder(down_attention=down, latent_channels=self.latent_channels, **common)
    self.quant_conv = layers.conv(self.vq_embed_dim, 1, "quant_conv", **kw)
    self.quantize = VectorQuantizer(self.num_vq_embeddings, self.vq_embed_dim,
                                    use_ema=self.codebook_ema, ema_decay=self.ema_decay,
                                    usage_decay=self.usage_decay, param_dtype=self.param_dtype)
    self.post_quant_conv = layers.conv(self.latent_channels, 1, "post_quant_conv", **kw)
    self.decoder = Decoder(up_attention=up, out_channels=self.out_channels * self.patch_size ** 2,
                           **common)

  def _check_images(self, images: jax.Array) -> None:
    f = self.downsample_factor
    if images.ndim != 4 or images.shape[-1] != self.in_channels:
      raise ValueError(f"Expected images [B, H, W, {self.in_channels}] (NHWC, floats in [-1, 1]), "
                       f"got shape {images.shape}.")
    if images.shape[1] % f or images.shape[2] % f:
      raise ValueError(f"Image size {images.shape[1:3]} is not divisible by the downsampling "
                       f"factor {f}; resize or crop the images.")

  def encode_latents(self, images: jax.Array) -> jax.Array:
    """``[B, H, W, 3]`` in [-1, 1] -> continuous latents ``[B, h, w, D]`` (diffusers ``encode``)."""
    self._check_images(images)
    return self.quant_conv(self.encoder(self.to_patches(images)))

  def encode(self, images: jax.Array, train: bool = False
             ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """``[B, H, W, 3]`` -> ``(latents [B, h, w, D], indices int32 [B, h, w], aux)``.

    ``latents`` are the continuous pre-quantization vectors; ``aux["quantized"]`` holds their
    (straight-through) codes, the rest of ``aux`` is the quantizer's.
    """
    latents = self.encode_latents(images)
    quantized, indices, aux = self.quantize(latents, train=train)
    return latents, indices, dict(aux, quantized=quantized)

  def decode_latents(self, quantized: jax.Array, return_features: bool = False):
    """Code vectors ``[B, h, w, D]`` -> images ``[B, H, W, 3]`` (and decoder features)."""
    out = self.decoder(self.post_quant_conv(quantized.astype(self.dtype)), return_features=True)
    images = depth_to_space(out[0], self.patch_size)
    return (images, out[1]) if return_features else images

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    """Codes int ``[B, h, w]`` -> images ``[B, H, W, 3]`` in about [-1, 1]."""
    if indices.ndim != 3:
      raise ValueError(f"decode_indices expects codes [B, h, w], got shape {indices.shape}; "
                       "reshape raster-order tokens [B, h*w] first.")
    return self.decode_latents(self.quantize.lookup(indices))

  def __call__(self, images: jax.Array, train: bool = False,
               use_quantizer: bool | jax.Array = True, return_features: bool = False):
    """Reconstructs ``images`` ``[B, H, W, 3]``.

    Args:
      images: floats in [-1, 1].
      train: update the ``'vq_stats'`` collection (when it is mutable).
      use_quantizer: False (or a traced False) feeds the continuous latents to the decoder: the
        plain-autoencoder warm-up. Selected with ``jnp.where`` so it may depend on the step.
      return_features: also return the input of the decoder's last conv (``aux["features"]``).

    Returns:
      ``(reconstruction [B, H, W, 3], aux)``; ``aux`` holds the quantizer outputs (losses are zeroed
      when the quantizer is bypassed), ``indices`` and ``latents``.
    """
    latents, indices, aux = self.encode(images, train=train)
    use_q = jnp.asarray(use_quantizer, jnp.bool_)
    decoder_in = jnp.where(use_q, aux["quantized"], latents)
    recon, features = self.decode_latents(decoder_in, return_features=True)
    on = use_q.astype(jnp.float32)
    aux = dict(aux, indices=indices, latents=latents,
               commitment_loss=aux["commitment_loss"] * on,
               codebook_loss=aux["codebook_loss"] * on)
    if return_features:
      aux["features"] = features
    return recon, aux
