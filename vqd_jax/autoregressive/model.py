"""A decoder-only transformer over image tokens in raster order, conditioned on text.

  h = emb[x_{n-1}] + height_emb[n // W] + width_emb[n % W]      # x_{-1} = BOS (index K)
  repeat num_layers times:
    h = h + attn1(norm1(h))                 # causal self-attention (a key-value cache when decoding)
    h = h + attn2(norm2(h), text)           # cross-attention to the conditioner's states
    h = h + ff(norm3(h))                    # LayerNorm -> Linear(d, r·d) -> GELU -> Linear
  log p(x_n | x_<n, text) = log_softmax(out(norm_out(h)))           # [B, N, K]

The layers are the denoiser's (``vqd_jax.layers``) with plain LayerNorms where the denoiser has
timestep-modulated ones, so at equal width and depth the two differ in parameters only by the
AdaLN timestep tables and projections. ``causal=False`` gives the same stack without the mask and
without the shift: a bidirectional map from one token grid to another (CTF's fine predictor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqd_jax.layers import (ACTIVATION_AXES, DEFAULT_INIT_STDDEV, Attention, FeedForward,
                            check_text_inputs, constant_init, dense, embed, gradient_fence,
                            layer_norm, project_context)
from vqd_jax.transformer.embedding import sincos_table

Dtype = Any


class TextConditionedBlock(nn.Module):
  """LayerNorm self-attention (causal or not), LayerNorm cross-attention, LayerNorm MLP."""
  num_heads: int
  head_dim: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  causal: bool = True
  decode: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, text_states: jax.Array, text_mask: jax.Array | None,
               deterministic: bool = True,
               context_kv: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """h: [B, N, D] (N = 1 in a decode step); text_states: [B, L, Dt]; text_mask: [B, L];
    context_kv: the text's cross-attention key and value, projected once (decoding)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn = dict(num_heads=self.num_heads, head_dim=self.head_dim, dropout=self.dropout, **kw)
    x = layer_norm(name="norm1", **kw)(h)
    h = h + Attention(causal=self.causal, decode=self.decode, name="attn1", **attn)(
        x, deterministic=deterministic)
    h = nn.with_logical_constraint(h, ACTIVATION_AXES)
    x = layer_norm(name="norm2", **kw)(h)
    h = h + Attention(kv_axis="text_embed", name="attn2", **attn)(
        x, text_states, key_mask=text_mask, deterministic=deterministic, context_kv=context_kv)
    h = nn.with_logical_constraint(h, ACTIVATION_AXES)
    x = layer_norm(name="norm3", **kw)(h)
    h = h + FeedForward(self.mlp_ratio * h.shape[-1], dropout=self.dropout, name="ff", **kw)(
        x, deterministic=deterministic)
    return nn.with_logical_constraint(h, ACTIVATION_AXES)


class TokenGridEmbedding(nn.Module):
  """Token embedding plus learned row and column embeddings of raster positions ``[B, n]``."""
  num_embed: int
  height: int
  width: int
  features: int
  position_init: str = "sincos"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
    """tokens [B, n] int, positions [n] int (raster indices) -> [B, n, D]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.position_init not in ("normal", "sincos"):
      raise ValueError(f"position_init must be 'normal' or 'sincos', got {self.position_init!r}.")
    inits = [None, None]
    if self.position_init == "sincos":
      inits = [constant_init(sincos_table(n, self.features, half, DEFAULT_INIT_STDDEV))
               for half, n in enumerate((self.height, self.width))]
    emb = embed(self.num_embed, self.features, ("vocab", "embed"), name="emb", **kw)(tokens)
    rows = embed(self.height, self.features, ("length", "embed"), name="height_emb",
                 init=inits[0], **kw)(positions // self.width)
    cols = embed(self.width, self.features, ("length", "embed"), name="width_emb",
                 init=inits[1], **kw)(positions % self.width)
    return emb + (rows + cols)[None]


class ARTransformer(nn.Module):
  """p(x_n | x_<n, text) over ``height × width`` tokens with ``num_classes`` (K) codes.

  Input ids are ``0..K-1``; the start token is ``K``. ``decode=True`` builds the key-value-cached
  variant (same parameters): see :meth:`__call__`. Presets: ``configs/ar.py``.
  ``causal=False`` (with ``input_classes``) is the bidirectional grid-to-grid map.
  """
  num_classes: int
  height: int
  width: int
  num_layers: int
  num_heads: int
  head_dim: int
  cross_attention_dim: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  position_init: str = "sincos"
  remat: bool = False
  causal: bool = True
  # Input vocabulary when not causal (e.g. CTF's coarse labels); 0: K + 1 (codes and start).
  input_classes: int = 0
  decode: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def num_tokens(self) -> int:
    return self.height * self.width

  @property
  def start_token(self) -> int:
    return self.num_classes

  @nn.compact
  def __call__(self, tokens: jax.Array, text_states: jax.Array,
               text_mask: jax.Array | None = None, deterministic: bool = True,
               position: jax.Array | int | None = None,
               context_kv: Sequence[tuple[jax.Array, jax.Array]] | None = None) -> jax.Array:
    """Log-probabilities of the codes.

    Args:
      tokens: causal: ``[B, N]`` codes x; the output at n is log p(x_n | x_<n) (the input is
        shifted right internally, the start token first). Decoding (``decode=True``, after the
        cache exists): ``[B, 1]``, the previous code (the start token at position 0).
        Not causal: ``[B, N]`` input ids in ``0..input_classes-1``.
      text_states: ``[B, L, Dt]``; text_mask: ``[B, L]`` bool (True = real token) or None.
      deterministic: False enables dropout (needs a 'dropout' rng).
      position: the raster position (scalar, may be traced) predicted by a decode step; None in
        every other call (the decode model's first call, on ``[B, N]`` tokens, sizes the cache).
      context_kv: per block, the text's cross-attention key and value (:func:`decoder_context`),
        so that decode steps do not project the same text again at every position.

    Returns:
      ``[B, N, K]`` (``[B, 1, K]`` in a decode step) float32 log-probabilities.
    """
    self._check(tokens, text_states, text_mask, position)
    width = self.num_heads * self.head_dim
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.decode and position is not None:  # one cached step
      positions = jnp.reshape(jnp.asarray(position, jnp.int32), (1,))
    else:
      positions = jnp.arange(self.num_tokens)
      if self.causal:
        start = jnp.full((tokens.shape[0], 1), self.start_token, tokens.dtype)
        tokens = jnp.concatenate([start, tokens[:, :-1]], axis=1)
    vocab = self.num_classes + 1 if self.causal else self.input_classes
    h = TokenGridEmbedding(vocab, self.height, self.width, width, self.position_init,
                           name="embedding", **kw)(tokens, positions)
    h = nn.with_logical_constraint(h, ACTIVATION_AXES)
    block_cls = TextConditionedBlock
    if self.remat and not self.decode:
      block_cls = nn.remat(TextConditionedBlock, static_argnums=(4,))  # deterministic
    for i in range(self.num_layers):
      h = block_cls(self.num_heads, self.head_dim, self.mlp_ratio, self.dropout, self.causal,
                    self.decode, name=f"transformer_blocks_{i}", **kw)(
                        h, text_states, text_mask, deterministic,
                        None if context_kv is None else context_kv[i])
      h = gradient_fence(h)
    h = layer_norm(name="norm_out", **kw)(h)
    logits = dense(self.num_classes, ("embed", "vocab"), name="out", **kw)(h)
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return nn.with_logical_constraint(log_p, ("activation_batch", "activation_length", None))

  def _check(self, tokens, text_states, text_mask, position) -> None:
    if not self.causal and not self.input_classes:
      raise ValueError("A non-causal ARTransformer maps one grid to another: set input_classes.")
    if self.decode and not self.causal:
      raise ValueError("decode=True needs causal=True.")
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be integer ids [batch, length], got {tokens.dtype} "
                       f"{tokens.shape}.")
    length = 1 if self.decode and position is not None else self.num_tokens
    if tokens.shape[1] != length:
      raise ValueError(f"tokens must be [batch, {length}] (height {self.height} × width "
                       f"{self.width}; [batch, 1] in decode steps), got {tokens.shape}.")
    check_text_inputs(text_states, text_mask, tokens.shape[0], self.cross_attention_dim)


def decoder_context(model: ARTransformer, params: Any, text_states: jax.Array
                    ) -> list[tuple[jax.Array, jax.Array]]:
  """Every block's cross-attention key and value ``[B, L, H, Dh]`` of ``text_states`` (the
  ``context_kv`` of decode steps: projected once per sample instead of once per position)."""
  return [project_context(params[f"transformer_blocks_{i}"]["attn2"], text_states,
                          model.num_heads, model.head_dim, dtype=model.dtype)
          for i in range(model.num_layers)]
