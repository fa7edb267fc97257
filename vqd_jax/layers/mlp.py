"""Position-wise and grid MLPs: the diffusers fc MLP, the official 3x3 ``Conv_MLP`` and Mix-FFN.

Submodule names follow diffusers ``FeedForward`` (``net_0/proj``, ``net_2``) and the official
``Conv_MLP`` (``conv1``, ``conv2``) so that checkpoints convert by name.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqd_jax.layers.basic import Dtype, approximate_gelu, dense


class ApproximateGELUProjection(nn.Module):
  """diffusers ``ApproximateGELU``: ``proj`` (d -> hidden) then ``x·sigmoid(1.702x)``."""
  hidden: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., D] -> [..., hidden]."""
    x = dense(self.hidden, ("embed", "mlp"), name="proj", dtype=self.dtype,
              param_dtype=self.param_dtype)(x)
    return approximate_gelu(x)


class FeedForward(nn.Module):
  """``net_0`` (Linear d->hidden + approximate GELU) -> dropout (``net_1``) -> ``net_2``
  (hidden->d)."""
  hidden: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """x: [B, N, D] -> [B, N, D]."""
    width = x.shape[-1]
    x = ApproximateGELUProjection(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype,
                                  name="net_0")(x)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", None))
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    return dense(width, ("mlp", "embed"), name="net_2", dtype=self.dtype,
                 param_dtype=self.param_dtype)(x)


class GridFeedForward(nn.Module):
  """Fields and input check shared by the MLPs that mix neighbours on a ``height x width`` grid."""
  hidden: int
  height: int
  width: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def check_grid(self, x: jax.Array) -> tuple[int, int, int]:
    """``(B, N, D)`` of ``x`` [B, N, D], after checking N = height·width."""
    batch, length, features = x.shape
    if length != self.height * self.width:
      raise ValueError(f"{type(self).__name__} needs {self.height}x{self.width} = "
                       f"{self.height * self.width} tokens, got {length}.")
    return batch, length, features


class ConvFeedForward(GridFeedForward):
  """The official ``Conv_MLP`` of VQ-Diffusion-S (``cub200_s.yaml``, ``mlp_type: conv_mlp``).

  ``conv1`` (3x3, d -> hidden) -> GELU2 -> dropout -> ``conv2`` (3x3, hidden -> d) over the token
  grid, zero-padded at its border: each token mixes with its 8 neighbours, which the fc MLP of the
  diffusers layout cannot. Kernels are ``[3, 3, in, out]`` (torch ``Conv2d.weight`` transposed
  ``(2, 3, 1, 0)``).
  """
  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """x: [B, N, D] with N = height·width in raster order -> [B, N, D]."""
    batch, length, features = self.check_grid(x)
    # torch.nn.Conv2d's default init: uniform with variance 1/(3·fan_in).
    kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

    def conv(features_out, axes, name):
      return nn.Conv(features_out, (3, 3), padding="SAME", name=name, dtype=self.dtype,
                     param_dtype=self.param_dtype,
                     kernel_init=nn.with_logical_partitioning(kernel_init, (None, None) + axes),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                            axes[1:]))

    y = conv(self.hidden, ("embed", "mlp"), "conv1")(x.reshape(batch, self.height, self.width,
                                                                features))
    y = nn.Dropout(self.dropout)(approximate_gelu(y), deterministic=deterministic)
    y = conv(features, ("mlp", "embed"), "conv2")(y)
    return y.reshape(batch, length, features)


def depthwise_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Zero-padded 3x3 depthwise convolution: x [B, H, W, C], kernel [3, 3, C] -> [B, H, W, C].

  Written as nine shifted multiply-adds (elementwise ops any backend fuses) rather than a grouped
  ``lax.conv``. ``kernel[dy, dx]`` weighs the neighbour at offset ``(dy - 1, dx - 1)``
  (cross-correlation, like ``nn.Conv``).
  """
  height, width = x.shape[1], x.shape[2]
  out = 0
  for dy in range(3):
    for dx in range(3):
      oy, ox = dy - 1, dx - 1
      # Slice x, then pad the product where the neighbour is missing: padding x once and slicing
      # it makes XLA's CPU gradient of the Mix-FFN 2.4x slower.
      term = x[:, max(oy, 0):height + min(oy, 0), max(ox, 0):width + min(ox, 0)] * kernel[dy, dx]
      out = out + jnp.pad(term, ((0, 0), (max(-oy, 0), max(oy, 0)), (max(-ox, 0), max(ox, 0)),
                                 (0, 0)))
  return out


class MixFeedForward(GridFeedForward):
  """Mix-FFN (SegFormer): ``fc1`` (d -> hidden) -> 3x3 depthwise ``dwconv`` -> GELU -> ``fc2``.

  Locality like ``ConvFeedForward`` (each token sees its 8 neighbours) at about the cost of the fc
  MLP: the spatial mixing is per channel (9·hidden weights) instead of a dense 3x3 kernel
  (9·d·hidden per conv). Not part of any public checkpoint layout.
  """
  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """x: [B, N, D] with N = height·width in raster order -> [B, N, D]."""
    batch, length, features = self.check_grid(x)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = dense(self.hidden, ("embed", "mlp"), name="fc1", **kw)(x)
    # Unit-variance output at init for unit-variance input: each output sums 9 neighbours.
    kernel = self.param("dwconv", nn.with_logical_partitioning(
        nn.initializers.normal(1 / 3), (None, None, "mlp")), (3, 3, self.hidden), self.param_dtype)
    y = depthwise_conv3x3(y.reshape(batch, self.height, self.width, self.hidden),
                          kernel.astype(y.dtype))
    y = approximate_gelu(y.reshape(batch, length, self.hidden))
    y = nn.with_logical_constraint(y, ("activation_batch", "activation_length", None))
    y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
    return dense(features, ("mlp", "embed"), name="fc2", **kw)(y)
