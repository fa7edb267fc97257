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


# Key/query block sizes of the blocked path (measured best of 64-1024 on a 2-core CPU for the S
# model's self-attention: 2 x 1024 tokens x 16 heads of 12, 76 ms against 177 ms materialised).
KEY_BLOCK, QUERY_BLOCK = 128, 256


def blocked_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                      key_block: int = KEY_BLOCK, query_block: int = QUERY_BLOCK) -> jax.Array:
  """softmax(QKᵀ/√d) V computed block by block with a running (online) softmax.

  The same result as :func:`dot_product_attention` without masks or bias, but never holds more
  than ``[B, H, query_block, key_block]`` scores: XLA's CPU backend otherwise writes and re-reads
  the whole ``[B, H, Nq, Nk]`` score tensor, which makes attention over 1,024 image tokens
  memory-bound (small head dims give it little arithmetic to hide behind).

  Args:
    query: [B, Nq, H, Dh] with Nq divisible by ``query_block``.
    key, value: [B, Nk, H, Dh] with Nk divisible by ``key_block``.

  Returns:
    [B, Nq, H, Dh] in the query's dtype.
  """
  b, nq, h, d = query.shape
  nk = key.shape[1]
  if nq % query_block or nk % key_block:
    raise ValueError(f"blocked_attention needs Nq % {query_block} == 0 and Nk % {key_block} == 0, "
                     f"got Nq={nq}, Nk={nk}.")
  out_dtype = query.dtype
  q = (query.astype(jnp.float32) * d ** -0.5).reshape(b, nq // query_block, query_block, h, d)
  to_blocks = lambda x: x.astype(jnp.float32).reshape(b, nk // key_block, key_block, h, d
                                                      ).transpose(1, 0, 3, 2, 4)
  keys, values = to_blocks(key), to_blocks(value)  # [nk/kb, B, H, kb, Dh]

  def one_query_block(qb):  # [B, H, qb, Dh]
    def step(carry, kv):
      running_max, normaliser, acc = carry
      scores = jnp.einsum("bhqd,bhkd->bhqk", qb, kv[0])
      new_max = jnp.maximum(running_max, scores.max(-1))
      p = jnp.exp(scores - new_max[..., None])
      rescale = jnp.exp(running_max - new_max)
      acc = acc * rescale[..., None] + jnp.einsum("bhqk,bhkd->bhqd", p, kv[1])
      return (new_max, normaliser * rescale + p.sum(-1), acc), None

    init = (jnp.full(qb.shape[:3], -jnp.inf), jnp.zeros(qb.shape[:3]), jnp.zeros(qb.shape))
    (_, normaliser, acc), _ = jax.lax.scan(step, init, (keys, values))
    return acc / normaliser[..., None]

  out = jax.lax.map(one_query_block, q.transpose(1, 0, 3, 2, 4))  # [nq/qb, B, H, qb, Dh]
  return out.transpose(1, 0, 3, 2, 4).reshape(b, nq, h, d).astype(out_dtype)


def _use_blocked(query: jax.Array, key: jax.Array, key_mask, bias) -> bool:
  """Blocked attention where it pays: CPU, no mask or bias, long block-divisible sequences.

  On GPU and TPU XLA's own attention is kept (fused kernels, and it shards cleanly)."""
  return (key_mask is None and bias is None and jax.default_backend() == "cpu"
          and key.shape[1] >= 4 * KEY_BLOCK and key.shape[1] % KEY_BLOCK == 0
          and query.shape[1] % QUERY_BLOCK == 0)


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
    of the NaN a softmax over only −inf would give). On CPU, unmasked attention over 512 or more
    keys takes the :func:`blocked_attention` path (same result, far less memory traffic).
  """
  if _use_blocked(query, key, key_mask, bias):
    return blocked_attention(query, key, value)
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
