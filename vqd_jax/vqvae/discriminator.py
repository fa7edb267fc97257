"""PatchGAN discriminator (pix2pix / taming ``NLayerDiscriminator``), for the optional VQGAN loss.

taming uses BatchNorm; GroupNorm is used here instead so the discriminator needs no batch statistics
collection and behaves the same under any data sharding.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqd_jax.vqvae import layers

Dtype = Any


class PatchDiscriminator(nn.Module):
  """Real/fake logits per overlapping patch: ``[B, H, W, 3] -> [B, H', W', 1]``.

  ``conv_0`` (4x4 stride 2, no norm), then ``num_layers - 1`` further stride-2 and one stride-1
  4x4 convs with GroupNorm + LeakyReLU(0.2), widths ``base_channels * min(2**i, 8)``, then a 4x4
  conv to one logit.
  """
  base_channels: int = 64
  num_layers: int = 3
  norm_num_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pad = ((1, 1), (1, 1))
    h = layers.conv(self.base_channels, 4, "conv_0", strides=2, padding=pad,
                    axes=(None, None, None, "conv_out"), **kw)(images)
    h = nn.leaky_relu(h, 0.2)
    for i in range(1, self.num_layers + 1):
      width = self.base_channels * min(2 ** i, 8)
      stride = 2 if i < self.num_layers else 1
      h = layers.conv(width, 4, f"conv_{i}", strides=stride, padding=pad, use_bias=False, **kw)(h)
      groups = min(self.norm_num_groups, width)
      h = nn.leaky_relu(layers.group_norm(groups, width, f"norm_{i}", **kw)(h), 0.2)
    return layers.conv(1, 4, "conv_out", padding=pad, axes=(None, None, "conv_in", None),
                       **kw)(h).astype(jnp.float32)
