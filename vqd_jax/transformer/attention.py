"""Multi-head attention with key padding masks and additive biases (self- and cross-attention).

Parameter names match diffusers ``Attention`` (``to_q``, ``to_k``, ``to_v``, ``to_out_0``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqd_jax.transformer.layers import dense

Dtype = Any


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          key_mask: jax.Array | None = None,
                          bias: jax.Array | None = None) -> jax.Array:
  """softmax(QKᵀ/√d + bias) V over the key axis, with masked keys excluded.

  Args:
    query: [B, Nq, H, Dh].
    key: [B, Nk, H, Dh].
    value: [B, Nk, H, Dh].
    key_mask: [B, Nk] bool, True = the key may be attended to; None = all keys visible.
    bias: additive logits bias broadcastable to [B, H, Nq, Nk] (e.g. [1, 1, Nq, Nk]).

  Returns:
    [B, Nq, H, Dh] in the query's dtype. A query row whose keys are all masked gets zeros (instead
    of the NaN a softmax over only −inf would give).
  """
  depth = query.shape[-1]
  query = query * jnp.asarray(depth ** -0.5, query.dtype)
  # Logits and softmax in float32 even when computing in bfloat16: the softmax is the fragile part.
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if key_mask is None:
    weights = jax.nn.softmax(logits, axis=-1)
  else:
    visible = key_mask[:, None, None, :].astype(bool)
    any_visible = jnp.any(visible, axis=-1, keepdims=True)
    logits = jnp.where(visible, logits, -jnp.inf)
    # Rows with nothing visible would be softmax(−inf, ..., −inf) = NaN; give them finite logits and
    # zero their weights afterwards.
    logits = jnp.where(any_visible, logits, 0.0)
    weights = jax.nn.softmax(logits, axis=-1) * any_visible
  weights = weights.astype(value.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, value)


class Attention(nn.Module):
  """Multi-head attention with biased Q/K/V/out projections.

  Self-attention when ``context`` is None, cross-attention to ``context`` otherwise. ``kv_axis`` names
  the logical axis of the context width: 'embed' for self-attention, 'text_embed' for text states.
  """
  num_heads: int
  head_dim: int
  kv_axis: str = "embed"
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               key_mask: jax.Array | None = None, bias: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """x: [B, N, D]; context: [B, L, Dc] (None: x); key_mask: [B, L] bool; bias: [B|1, H|1, N, L].

    Returns [B, N, D].
    """
    width = x.shape[-1]
    context = x if context is None else context
    inner = self.num_heads * self.head_dim
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    split = lambda y: y.reshape(y.shape[:2] + (self.num_heads, self.head_dim))
    query = split(dense(inner, ("embed", "heads"), name="to_q", **kw)(x))
    key = split(dense(inner, (self.kv_axis, "heads"), name="to_k", **kw)(context))
    value = split(dense(inner, (self.kv_axis, "heads"), name="to_v", **kw)(context))
    out = dot_product_attention(query, key, value, key_mask=key_mask, bias=bias)
    out = out.reshape(out.shape[:2] + (inner,))
    out = dense(width, ("heads", "embed"), name="to_out_0", **kw)(out)
    return nn.Dropout(self.dropout)(out, deterministic=deterministic)
