"""The VQ-Diffusion denoising transformer: p(x0 | x_t, t, text) over K image-token classes.

Architecture (official ``Text2ImageTransformer`` = diffusers ``Transformer2DModel``, vectorized path):

  h = emb[x_t] + height_emb[n // W] + width_emb[n % W]
  repeat num_layers times:
    h = h + attn1(norm1(h, t))                      # AdaLN(t) -> self-attention
    h = h + attn2(norm2(h, t), text)                # AdaLN(t) -> cross-attention to text states
    h = h + ff(norm3(h))                            # LayerNorm -> Linear(d, 4d) -> GELU2 -> Linear
                                                    # (mlp_type="conv": the official Conv_MLP;
                                                    # "mix": fc + depthwise 3x3, Mix-FFN)
  log p(x0 | x_t) = log_softmax(out(norm_out(h)))    # [B, N, K]

With ``global_cond_dim > 0`` a per-sample vector, projected to the width, joins the timestep
embedding of every AdaLN (not the official layout).

``patch_size = p > 1`` runs the blocks over p x p blocks of tokens (see ``transformer.patches``):
about p² times less compute per image, same inputs and outputs, not the official layout.

Differences from diffusers, on purpose:
* ``t`` is per sample ([B]); diffusers takes one scalar timestep per batch, which rules out training.
* The output is channels-last ``[B, N, K]`` (diffusers: ``[B, K, N]``).
* log_softmax runs in float32 (diffusers and the official code use float64, which TPUs lack). The
  reference test measures the difference: 4.8e-7 on log-probabilities of a random model with
  |log p| up to 4.
* Cross-attention accepts a text padding mask and an additive bias. Pretrained ITHQ used neither
  (CLIP pad tokens are attended to), so pass ``text_mask=None`` for pretrained CLIP checkpoints.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqd_jax.layers import (ACTIVATION_AXES, AdaLayerNorm, Attention, ConvFeedForward, FeedForward,
                            MixFeedForward, check_text_inputs, dense, gradient_fence, layer_norm)
from vqd_jax.transformer import patches
from vqd_jax.transformer.embedding import LatentImageEmbedding
from vqd_jax.transformer.relative_position import RelativePositionBias

Dtype = Any

MLP_TYPES = ("fc", "conv", "mix")


class TransformerBlock(nn.Module):
  """AdaLN self-attention, AdaLN cross-attention, LayerNorm MLP, each residual.

  diffusers ``BasicTransformerBlock`` with ``norm_type="ada_norm"``.
  """
  num_heads: int
  head_dim: int
  num_embeds_ada_norm: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  mlp_type: str = "fc"
  grid: tuple[int, int] = (0, 0)  # (height, width) of the position grid (conv MLPs, rel. bias).
  relative_position_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, t: jax.Array, text_states: jax.Array,
               text_mask: jax.Array | None, cross_attention_bias: jax.Array | None,
               deterministic: bool = True, cond: jax.Array | None = None,
               scaled_bias: jax.Array | None = None) -> jax.Array:
    """h: [B, N, D]; t: [B]; text_states: [B, L, Dt]; text_mask: [B, L]; bias: [B|1, H|1, N, L];
    cond: [B, D] added to both AdaLN timestep embeddings (the projected global_cond), or None;
    scaled_bias: [B|1, H|1, N, L], the cross-attention bias scaled by the largest logit."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn = dict(num_heads=self.num_heads, head_dim=self.head_dim, dropout=self.dropout, **kw)
    width = h.shape[-1]
    x = AdaLayerNorm(self.num_embeds_ada_norm, name="norm1", **kw)(h, t, cond)
    self_bias = None
    if self.relative_position_bias:
      self_bias = RelativePositionBias(self.num_heads, *self.grid, param_dtype=self.param_dtype,
                                       name="attn1_relative_position")()
    h = h + Attention(name="attn1", **attn)(x, bias=self_bias, deterministic=deterministic)
    h = nn.with_logical_constraint(h, ACTIVATION_AXES)
    x = AdaLayerNorm(self.num_embeds_ada_norm, name="norm2", **kw)(h, t, cond)
    h = h + Attention(kv_axis="text_embed", name="attn2", **attn)(
        x, text_states, key_mask=text_mask, bias=cross_attention_bias, deterministic=deterministic,
        scaled_bias=scaled_bias)
    h = nn.with_logical_constraint(h, ACTIVATION_AXES)
    x = layer_norm(name="norm3", **kw)(h)
    if self.mlp_type == "fc":
      ff = FeedForward(self.mlp_ratio * width, dropout=self.dropout, name="ff", **kw)
    else:
      conv_type = ConvFeedForward if self.mlp_type == "conv" else MixFeedForward
      ff = conv_type(self.mlp_ratio * width, *self.grid, dropout=self.dropout, name="ff", **kw)
    h = h + ff(x, deterministic=deterministic)
    return nn.with_logical_constraint(h, ACTIVATION_AXES)


class Text2ImageTransformer(nn.Module):
  """Denoising transformer over ``height × width`` image tokens with ``num_classes`` (K) codes.

  Token ids are ``0..K-1`` for codes and ``K`` for [MASK]; timesteps are ``0..num_embeds_ada_norm-1``
  (code index t, paper step t+1). Build from a preset:
  ``Text2ImageTransformer(**transformer_preset("B"))``.
  """
  num_classes: int
  height: int
  width: int
  num_layers: int
  num_heads: int
  head_dim: int
  cross_attention_dim: int
  num_embeds_ada_norm: int = 100
  mlp_ratio: int = 4
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False  # Recompute each block in the backward pass (less memory, ~1/3 more compute).
  position_init: str = "normal"  # or "sincos": see LatentImageEmbedding.
  # "fc" (diffusers layout; B, ITHQ), "conv" (the official Conv_MLP of VQ-Diffusion-S, 3x3
  # convolutions over the token grid) or "mix" (fc + 3x3 depthwise conv, SegFormer's Mix-FFN);
  # the last two are not loadable by diffusers: see ConvFeedForward, MixFeedForward.
  mlp_type: str = "fc"
  # Tokens per position along each side (1 = official: one position per token); see patches.py.
  patch_size: int = 1
  # A learned 2-D relative position bias in every self-attention; see relative_position.py.
  relative_position_bias: bool = False
  # Width of an optional per-sample conditioning vector (e.g. a pooled text embedding); 0: none.
  # Its projection starts at zero, so a fresh model computes what it would without it.
  global_cond_dim: int = 0

  @property
  def num_tokens(self) -> int:
    return self.height * self.width

  @nn.compact
  def __call__(self, x_t: jax.Array, t: jax.Array, text_states: jax.Array,
               text_mask: jax.Array | None = None, cross_attention_bias: jax.Array | None = None,
               deterministic: bool = True, global_cond: jax.Array | None = None,
               scaled_cross_attention_bias: jax.Array | None = None) -> jax.Array:
    """Predicts log p(x0 | x_t).

    Args:
      x_t: [B, N] int image tokens, N = height·width, values in 0..K (K = [MASK]).
      t: [B] int timesteps (a scalar is broadcast to the batch).
      text_states: [B, L, Dt] text-encoder states, Dt = cross_attention_dim.
      text_mask: [B, L] bool, True for real tokens; padded keys get no attention. None: attend to all.
      cross_attention_bias: additive cross-attention logits bias, shape [B|1, H|1, N, L].
      deterministic: False enables dropout (needs a 'dropout' rng).
      global_cond: [B, global_cond_dim] float, projected (``global_cond_proj``, zero-initialised) to
        the model width and added to every AdaLN's timestep embedding. None reads as zeros (the
        projection's bias alone). Only with ``global_cond_dim > 0``.
      scaled_cross_attention_bias: [B|1, H|1, N, L], added to the cross-attention logits of every
        block after multiplication by the example's largest logit (paint-with-words; see
        ``vqd_jax.layers.dot_product_attention``).

    Returns:
      [B, N, K] float32 log-probabilities over the K codes (never [MASK]).
    """
    t = self._check_inputs(x_t, t, text_states, text_mask)
    cross_attention_bias = self._check_bias(cross_attention_bias, text_states, "cross_attention_bias")
    scaled_bias = self._check_bias(scaled_cross_attention_bias, text_states,
                                   "scaled_cross_attention_bias")
    global_cond = self._check_global_cond(global_cond, x_t.shape[0])
    width = self.num_heads * self.head_dim
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p = self.patch_size
    grid = patches.check_patch_grid(self.height, self.width, p)
    h = LatentImageEmbedding(self.num_classes + 1, self.height, self.width, width,
                             position_init=self.position_init, patch_size=p,
                             name="latent_image_embedding", **kw)(x_t)
    h = nn.with_logical_constraint(h, ACTIVATION_AXES)
    cond = None
    if self.global_cond_dim:
      # Zero kernel and bias: a fresh model's AdaLNs see exactly their timestep embeddings.
      cond = dense(width, (None, "embed"), name="global_cond_proj", stddev=0.0, **kw)(
          global_cond.astype(self.dtype))
    block_cls = TransformerBlock
    if self.remat:
      # Argument 6 (counting self as 0) is `deterministic`, a Python bool.
      block_cls = nn.remat(TransformerBlock, static_argnums=(6,))
    if self.mlp_type not in MLP_TYPES:
      raise ValueError(f"mlp_type must be one of {MLP_TYPES}, got {self.mlp_type!r}.")
    for i in range(self.num_layers):
      h = block_cls(self.num_heads, self.head_dim, self.num_embeds_ada_norm, self.mlp_ratio,
                    self.dropout, self.mlp_type, grid, self.relative_position_bias,
                    name=f"transformer_blocks_{i}", **kw)(
                        h, t, text_states, text_mask, cross_attention_bias, deterministic, cond,
                        scaled_bias)
      h = gradient_fence(h)
    h = layer_norm(name="norm_out", **kw)(h)
    logits = dense(self.num_classes * p * p, ("embed", "vocab"), name="out", **kw)(h)
    # [B, M, p²·K] -> [B, N, K] in raster order (a plain reshape when p = 1).
    logits = patches.from_patches(logits.reshape(*logits.shape[:2], p * p, self.num_classes),
                                  self.height, self.width, p)
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return nn.with_logical_constraint(log_p, ("activation_batch", "activation_length", None))

  def _check_global_cond(self, global_cond: jax.Array | None, batch: int) -> jax.Array | None:
    """global_cond [B, global_cond_dim] checked (None: zeros when global_cond_dim > 0)."""
    if not self.global_cond_dim:
      if global_cond is not None:
        raise ValueError("global_cond was passed to a model with global_cond_dim=0; set "
                         "global_cond_dim to its width.")
      return None
    if global_cond is None:
      return jnp.zeros((batch, self.global_cond_dim), jnp.float32)
    if global_cond.shape != (batch, self.global_cond_dim):
      raise ValueError(f"global_cond must be [{batch}, {self.global_cond_dim}], got "
                       f"{global_cond.shape}.")
    return global_cond

  def _check_inputs(self, x_t, t, text_states, text_mask) -> jax.Array:
    if x_t.ndim != 2 or x_t.shape[1] != self.num_tokens:
      raise ValueError(f"x_t must be [batch, {self.num_tokens}] image tokens (height {self.height} × "
                       f"width {self.width}), got shape {x_t.shape}.")
    if not jnp.issubdtype(x_t.dtype, jnp.integer):
      raise ValueError(f"x_t must hold integer token ids, got dtype {x_t.dtype}.")
    batch = x_t.shape[0]
    t = jnp.asarray(t)
    if t.ndim == 0:
      t = jnp.broadcast_to(t, (batch,))
    if t.shape != (batch,) or not jnp.issubdtype(t.dtype, jnp.integer):
      raise ValueError(f"t must be integer timesteps of shape [{batch}] (or a scalar), got "
                       f"{t.dtype} {t.shape}.")
    check_text_inputs(text_states, text_mask, batch, self.cross_attention_dim)
    return t

  def _check_bias(self, bias: jax.Array | None, text_states: jax.Array, name: str
                  ) -> jax.Array | None:
    """A [B|1, H|1, N, L] cross-attention bias checked and averaged to the patch grid [.., M, L]."""
    if bias is None:
      return None
    batch, length = text_states.shape[:2]
    expected = (batch, self.num_heads, self.num_tokens, length)
    if not (bias.ndim == 4 and all(b in (1, e) for b, e in zip(bias.shape, expected))
            and bias.shape[2:] == expected[2:]):
      raise ValueError(f"{name} must broadcast as [{batch} or 1, {self.num_heads} or 1, "
                       f"{self.num_tokens}, {length}], got {bias.shape}.")
    # One query per patch: the patch's tokens share its attention, so their biases are averaged
    # (the identity when patch_size = 1).
    bias = patches.to_patches(jnp.moveaxis(bias, 2, 1), self.height, self.width,
                              self.patch_size).mean(2)
    return jnp.moveaxis(bias, 1, 2)
