"""Building blocks of the denoising transformer: partitioned Dense/LayerNorm/Embed, AdaLN, MLP.

Submodule and parameter names follow the diffusers ``Transformer2DModel`` (vectorized path) so that
``vqd_jax.interop.state_dict`` converts checkpoints by name. Every parameter carries logical axis
names (see the project's vocabulary) so sharding is a rule table away.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.transformer import patches

Dtype = Any
AxisNames = Sequence[str | None]

# The official VQ-Diffusion code initialises Linear and Embedding weights with N(0, 0.02) and biases
# with zeros (Text2ImageTransformer._init_weights); we follow it for training from scratch.
DEFAULT_INIT_STDDEV = 0.02
# Residual-stream activations: ('activation_batch', 'activation_length', 'activation_embed').
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


def dense(features: int, axes: tuple[str | None, str | None], *, name: str, dtype: Dtype,
          param_dtype: Dtype, use_bias: bool = True,
          stddev: float = DEFAULT_INIT_STDDEV) -> nn.Dense:
  """A ``nn.Dense`` whose kernel ``[in, out]`` is named ``axes`` and whose bias is named ``axes[1]``."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.normal(stddev), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)))


def layer_norm(*, name: str, dtype: Dtype, param_dtype: Dtype, affine: bool = True,
               epsilon: float = 1e-5) -> nn.LayerNorm:
  """torch-compatible LayerNorm (two-pass variance, eps 1e-5); statistics in float32."""
  return nn.LayerNorm(
      epsilon=epsilon, use_bias=affine, use_scale=affine, dtype=dtype, param_dtype=param_dtype,
      use_fast_variance=False, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)))


def _constant_init(value: np.ndarray):
  def init(key, shape, dtype=jnp.float32):
    del key
    if tuple(shape) != value.shape:
      raise ValueError(f"Initial table has shape {value.shape}, the parameter {tuple(shape)}.")
    return jnp.asarray(value, dtype)
  return init


def embed(num_embeddings: int, features: int, axes: tuple[str | None, str | None], *, name: str,
          dtype: Dtype, param_dtype: Dtype, stddev: float = DEFAULT_INIT_STDDEV,
          init=None) -> nn.Embed:
  """A ``nn.Embed`` table ``[num_embeddings, features]`` named ``axes`` (``init``: N(0, stddev)).

  Out-of-range indices read as NaN (``jnp.take`` fill mode), which makes a bad timestep or token id
  visible in the output instead of silently clamping it.
  """
  return nn.Embed(
      num_embeddings, features, dtype=dtype, param_dtype=param_dtype, name=name,
      embedding_init=nn.with_logical_partitioning(init or nn.initializers.normal(stddev), axes))


def approximate_gelu(x: jax.Array) -> jax.Array:
  """``x·sigmoid(1.702x)``: the official "GELU2" and diffusers ``ApproximateGELU``."""
  return x * jax.nn.sigmoid(1.702 * x)


class AdaLayerNorm(nn.Module):
  """LayerNorm (no affine, eps 1e-5) modulated by a learned per-timestep embedding.

  ``AdaLN(h, t) = LN(h)·(1 + scale) + shift`` with ``[scale, shift] = linear(silu(emb[t]))``; the first
  half of the linear output is the scale (diffusers ``AdaLayerNorm`` with ``chunk_dim=0``).
  """
  num_embeddings: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, t: jax.Array, cond: jax.Array | None = None) -> jax.Array:
    """h: [B, N, D]; t: [B] int; cond: optional [B, D] added to the timestep embedding (the
    pooled-text conditioning of ``Text2ImageTransformer.pooled_text_adaln``). Returns [B, N, D]."""
    width = h.shape[-1]
    temb = embed(self.num_embeddings, width, ("timestep", "embed"), name="emb",
                 dtype=self.dtype, param_dtype=self.param_dtype)(t)
    if cond is not None:
      temb = temb + cond.astype(temb.dtype)
    # The output axis packs [scale, shift]; sharding it would split the two halves, so leave it None.
    temb = dense(2 * width, ("embed", None), name="linear", dtype=self.dtype,
                 param_dtype=self.param_dtype)(nn.silu(temb))
    scale, shift = jnp.split(temb[:, None, :], 2, axis=-1)
    normed = layer_norm(name="norm", affine=False, dtype=self.dtype,
                        param_dtype=self.param_dtype)(h)
    return normed * (1 + scale) + shift


class ApproximateGELUProjection(nn.Module):
  """diffusers ``ApproximateGELU``: ``proj`` (d -> hidden) then ``x·sigmoid(1.702x)``."""
  hidden: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = dense(self.hidden, ("embed", "mlp"), name="proj", dtype=self.dtype,
              param_dtype=self.param_dtype)(x)
    return approximate_gelu(x)


class FeedForward(nn.Module):
  """``net_0`` (Linear d->hidden + approximate GELU) -> dropout (``net_1``) -> ``net_2`` (hidden->d)."""
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


MLP_TYPES = ("fc", "conv", "mix")


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
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(padded[:, dy:dy + height, dx:dx + width, :] * kernel[dy, dx]
             for dy in range(3) for dx in range(3))


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


def sincos_table(length: int, features: int, half: int, stddev: float) -> np.ndarray:
  """``[length, features]`` sinusoidal position table in channel half ``half`` (0 or 1), zeros in
  the other half, scaled to RMS ``stddev`` over its nonzero half.

  Row and column tables built for halves 0 and 1 sum to the 2-D sin-cos embedding of MAE/ViT
  (rows in the first half of the channels, columns in the second).
  """
  quarter = features // 4
  if quarter == 0:
    raise ValueError(f"A sin-cos position table needs at least 4 features, got {features}.")
  freqs = 1.0 / 10_000 ** (np.arange(quarter) / quarter)
  angles = np.arange(length)[:, None] * freqs[None]
  table = np.zeros((length, features), np.float64)
  start = half * (features // 2)
  table[:, start:start + quarter] = np.sin(angles)
  table[:, start + quarter:start + 2 * quarter] = np.cos(angles)
  return (table * stddev * np.sqrt(2.0)).astype(np.float32)  # sin/cos have RMS 1/sqrt(2)


class LatentImageEmbedding(nn.Module):
  """Token embedding plus learned row and column embeddings (diffusers ``ImagePositionalEmbeddings``).

  Token ``n`` in raster order sits at row ``n // width`` and column ``n % width``.
  ``position_init``: ``"normal"`` (the official init, N(0, 0.02)) or ``"sincos"`` (the row and
  column tables start as a 2-D sin-cos embedding, see :func:`sincos_table`, and are still
  learned). The latter gives attention spatial structure from the first step; the quickstart
  uses it (not compared against "normal" at equal settings yet).

  With ``patch_size = p > 1`` (see :mod:`vqd_jax.transformer.patches`) each position is a ``p x p``
  block of tokens: ``emb`` holds ``p²`` tables of ``num_embed`` rows, one per slot of the block,
  summed, and the row/column tables cover the ``(height/p) x (width/p)`` grid of blocks.
  """
  num_embed: int  # K + 1 rows: K codes and the [MASK] token (index K).
  height: int  # Token grid, not divided by patch_size.
  width: int
  features: int
  position_init: str = "normal"
  patch_size: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    """tokens: [B, N] int with N = height·width. Returns [B, M, D], M = N / patch_size²."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p = self.patch_size
    gh, gw = patches.check_patch_grid(self.height, self.width, p)
    table = embed(self.num_embed * p * p, self.features, ("vocab", "embed"), name="emb", **kw)
    emb = table(patches.slot_ids(tokens, self.height, self.width, p, self.num_embed)).sum(-2)
    if self.position_init not in ("normal", "sincos"):
      raise ValueError(f"position_init must be 'normal' or 'sincos', got {self.position_init!r}.")
    inits = [None, None]
    if self.position_init == "sincos":
      inits = [_constant_init(sincos_table(n, self.features, half, DEFAULT_INIT_STDDEV))
               for half, n in enumerate((gh, gw))]
    rows = embed(gh, self.features, ("length", "embed"), name="height_emb",
                 init=inits[0], **kw)(jnp.arange(gh))
    cols = embed(gw, self.features, ("length", "embed"), name="width_emb",
                 init=inits[1], **kw)(jnp.arange(gw))
    positions = (rows[:, None, :] + cols[None, :, :]).reshape(gh * gw, -1)
    return emb + positions[None]
