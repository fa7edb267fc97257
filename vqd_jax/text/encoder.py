"""A small text transformer, trained jointly with the denoiser when no pretrained encoder is used.

Token + learned position embeddings, pre-LN blocks with bidirectional self-attention that ignores
padding, and a final LayerNorm. The output feeds the denoiser's cross-attention, so ``width`` must equal
the denoiser's ``cross_attention_dim``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqd_jax.layers import ACTIVATION_AXES, Attention, dense, embed, layer_norm

Dtype = Any


class TextEncoderBlock(nn.Module):
  """``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``; padded keys are masked out."""
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
    """x: [B, L, D]; mask: [B, L] bool, True = real token. Returns [B, L, D]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"Text encoder width {width} is not divisible by num_heads {self.num_heads}.")
    y = layer_norm(name="ln_1", **kw)(x)
    x = x + Attention(self.num_heads, width // self.num_heads, dropout=self.dropout, name="attn",
                      **kw)(y, key_mask=mask, deterministic=deterministic)
    y = layer_norm(name="ln_2", **kw)(x)
    y = dense(self.mlp_ratio * width, ("embed", "mlp"), name="fc1", **kw)(y)
    y = nn.Dropout(self.dropout)(nn.gelu(y), deterministic=deterministic)
    x = x + dense(width, ("mlp", "embed"), name="fc2", **kw)(y)
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


class TextEncoder(nn.Module):
  """ids [B, L] + mask [B, L] -> states [B, L, width]."""
  vocab_size: int
  max_length: int
  width: int
  num_layers: int
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """ids: [B, L] int (L <= max_length); mask: [B, L] bool, True = real token (None: all real).

    Returns [B, L, width]. States at padded positions are computed but carry no information about
    the padding, so a masked consumer may ignore them.
    """
    if ids.ndim != 2 or ids.shape[1] > self.max_length:
      raise ValueError(f"ids must be [batch, length <= {self.max_length}], got {ids.shape}; "
                       "tokenize with the encoder's max_length.")
    if mask is None:
      mask = jnp.ones(ids.shape, bool)
    elif mask.shape != ids.shape:
      raise ValueError(f"mask shape {mask.shape} differs from ids shape {ids.shape}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = embed(self.vocab_size, self.width, ("vocab", "embed"), name="token_embedding", **kw)(ids)
    positions = embed(self.max_length, self.width, ("length", "embed"), name="position_embedding",
                      **kw)(jnp.arange(ids.shape[1]))
    x = nn.Dropout(self.dropout)(x + positions[None], deterministic=deterministic)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    for i in range(self.num_layers):
      x = TextEncoderBlock(self.num_heads, self.mlp_ratio, self.dropout, name=f"layers_{i}", **kw)(
          x, mask, deterministic)
    return layer_norm(name="final_layer_norm", **kw)(x)

  def init_params(self, key: jax.Array) -> Any:
    """Fresh (boxed, logically partitioned) params for ids of length ``max_length``."""
    ids = jnp.zeros((1, self.max_length), jnp.int32)
    return self.init(key, ids, jnp.ones_like(ids, bool))["params"]
