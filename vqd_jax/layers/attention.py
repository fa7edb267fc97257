"""Multi-head attention: self- and cross-attention, padding and causal masks, additive biases, and a
key-value cache for decoding one position at a time.

One module serves every model: the denoiser (diffusers names ``to_q``/``to_k``/``to_v``/
``to_out_0``), the text encoders (CLIP's Hugging Face names ``q_proj``/``k_proj``/``v_proj``/
``out_proj``) and the autoencoder's single-head spatial attention (diffusers ``VQModel``). The
projection names are an attribute, so every layout loads its checkpoints by name; the softmax(QKᵀ)V
kernel is another (``attention_fn``, as in ``flax.linen.MultiHeadDotProductAttention``), so a model
whose trained weights expect other float rounding keeps it.

Shapes: B batch, N queries, L keys, D model width, H heads, Dh head width.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqd_jax.layers.basic import Dtype, Initializer, dense

# Projection names (query, key, value, output) of the two checkpoint layouts.
DIFFUSERS_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out_0")  # diffusers Attention
HF_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")  # transformers CLIPAttention

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


def _use_blocked(query: jax.Array, key: jax.Array, key_mask, bias, mask=None) -> bool:
  """Blocked attention where it pays: CPU, no mask or bias, long block-divisible sequences.

  On GPU and TPU XLA's own attention is kept (fused kernels, and it shards cleanly)."""
  return (key_mask is None and bias is None and mask is None and jax.default_backend() == "cpu"
          and key.shape[1] >= 4 * KEY_BLOCK and key.shape[1] % KEY_BLOCK == 0
          and query.shape[1] % QUERY_BLOCK == 0)


def causal_mask(length: int) -> jax.Array:
  """[1, 1, length, length] bool: query i may attend to key j when j <= i."""
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          key_mask: jax.Array | None = None, bias: jax.Array | None = None, *,
                          mask: jax.Array | None = None,
                          scaled_bias: jax.Array | None = None) -> jax.Array:
  """softmax(QKᵀ/√d + bias + scaled_bias · m) V over the key axis, with masked keys excluded.

  Args:
    query: [B, Nq, H, Dh].
    key: [B, Nk, H, Dh].
    value: [B, Nk, H, Dh].
    key_mask: [B, Nk] bool, True = the key may be attended to; None = all keys visible.
    bias: additive logits bias broadcastable to [B, H, Nq, Nk] (e.g. [1, 1, Nq, Nk]).
    mask: bool broadcastable to [B, H, Nq, Nk] (e.g. :func:`causal_mask`), True = visible; it is
      combined with ``key_mask``.
    scaled_bias: broadcastable to [B, H, Nq, Nk], multiplied by m = max(0, the largest visible
      QKᵀ/√d logit of the example over every head, query and key) before it is added, so its
      effect does not depend on the scale of the logits (eDiff-I's paint-with-words bias).

  Returns:
    [B, Nq, H, Dh] in the query's dtype. A query row whose keys are all masked gets zeros (instead
    of the NaN a softmax over only −inf would give). On CPU, unmasked attention over 512 or more
    keys takes the :func:`blocked_attention` path (same result, far less memory traffic).
  """
  if scaled_bias is None and _use_blocked(query, key, key_mask, bias, mask):
    return blocked_attention(query, key, value)
  depth = query.shape[-1]
  query = query * jnp.asarray(depth ** -0.5, query.dtype)
  # Logits and softmax in float32 even when computing in bfloat16: the softmax is the fragile part.
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
  visible = None if key_mask is None else key_mask[:, None, None, :].astype(bool)
  if mask is not None:
    visible = mask.astype(bool) if visible is None else visible & mask.astype(bool)
  if scaled_bias is not None:
    seen = logits if visible is None else jnp.where(visible, logits, -jnp.inf)
    # Per example, so a sample never depends on its batch mates; clipped at 0 so that a bias
    # only ever draws attention towards its keys.
    scale = jnp.maximum(jnp.max(seen, axis=(1, 2, 3), keepdims=True), 0.0)
    logits = logits + scaled_bias.astype(jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if visible is None:
    weights = jax.nn.softmax(logits, axis=-1)
  else:
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

  Self-attention when ``context`` is None, cross-attention to ``context`` otherwise.

  Attributes:
    num_heads, head_dim: H and Dh; the projections are ``D -> H·Dh -> D``.
    causal: query i sees keys j <= i only (self-attention).
    decode: key-value cache mode (self-attention). The call that creates the ``cache`` collection
      (``init``, or ``apply`` with ``mutable=["cache"]`` on empty variables) takes the full-length
      input [B, L, D], sizes ``cached_key``/``cached_value`` [B, L, H, Dh] from it and attends as
      without a cache. Each later call takes one new position [B, 1, D], writes its key and value at
      ``cache_index``, attends to the positions written so far and advances ``cache_index``.
    dropout: on the output (needs a 'dropout' rng when not deterministic).
    projection_names: submodule names of the (query, key, value, output) projections, e.g.
      :data:`DIFFUSERS_PROJECTIONS` or :data:`HF_PROJECTIONS`.
    embed_axis, kv_axis, heads_axis: logical axis names of the query/output width, the context width
      ('text_embed' for text states) and the H·Dh inner width.
    kernel_init: initialiser of the four kernels (None: N(0, 0.02)); biases start at zero.
    attention_fn: ``(query, key, value, key_mask, bias, *, mask) -> [B, N, H, Dh]`` on
      [B, N|L, H, Dh] projections (also taking ``scaled_bias=`` where callers pass one);
      :func:`dot_product_attention` unless a model needs its own.
  """
  num_heads: int
  head_dim: int
  causal: bool = False
  decode: bool = False
  dropout: float = 0.0
  projection_names: tuple[str, str, str, str] = DIFFUSERS_PROJECTIONS
  embed_axis: str = "embed"
  kv_axis: str = "embed"
  heads_axis: str = "heads"
  kernel_init: Initializer | None = None
  attention_fn: Callable[..., jax.Array] = dot_product_attention
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               key_mask: jax.Array | None = None, bias: jax.Array | None = None,
               deterministic: bool = True, scaled_bias: jax.Array | None = None,
               context_kv: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """x: [B, N, D]; context: [B, L, Dc] (None: x); key_mask: [B, L] bool; bias and scaled_bias
    (see :func:`dot_product_attention`): [B|1, H|1, N, L]; context_kv: the context's key and
    value [B, L, H, Dh] already projected (:func:`project_context`: a decoder projects its text
    once per sample, not once per step), used instead of ``context``.

    In a decode step N = 1 and L is the cache length. Returns [B, N, D].
    """
    if context is not None and (self.causal or self.decode):
      raise ValueError("causal and decode attention are self-attention: pass no context.")
    width = x.shape[-1]
    context = x if context is None else context
    inner = self.num_heads * self.head_dim
    q_name, k_name, v_name, out_name = self.projection_names

    def project(features, axes, name, y):
      return dense(features, axes, name=name, dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=self.kernel_init)(y)

    split = lambda y: y.reshape(y.shape[:2] + (self.num_heads, self.head_dim))
    query = split(project(inner, (self.embed_axis, self.heads_axis), q_name, x))
    if context_kv is not None:
      key, value = (a.astype(query.dtype) for a in context_kv)
    else:
      key = split(project(inner, (self.kv_axis, self.heads_axis), k_name, context))
      value = split(project(inner, (self.kv_axis, self.heads_axis), v_name, context))
    mask = causal_mask(x.shape[1]) if self.causal else None
    if self.decode:
      key, value, mask = self._update_cache(key, value, mask)
    extra = {} if scaled_bias is None else {"scaled_bias": scaled_bias}
    out = self.attention_fn(query, key, value, key_mask, bias, mask=mask, **extra)
    out = out.reshape(out.shape[:2] + (inner,))
    out = project(width, (self.heads_axis, self.embed_axis), out_name, out)
    return nn.Dropout(self.dropout)(out, deterministic=deterministic)

  def _update_cache(self, key: jax.Array, value: jax.Array, mask: jax.Array | None
                    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Writes one position's key/value [B, 1, H, Dh] into the cache; returns the cached keys and
    values [B, L, H, Dh] and the mask [1, 1, 1, L] of the positions written so far."""
    initialised = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not initialised:  # The call that sizes the cache attends over its whole input.
      return key, value, mask
    batch, length, heads, depth = cached_key.value.shape
    if key.shape != (batch, 1, heads, depth):
      raise ValueError(f"A decode step takes one position: expected keys {(batch, 1, heads, depth)}"
                       f", got {key.shape}.")
    index = cache_index.value
    key = jax.lax.dynamic_update_slice(cached_key.value, key, (0, index, 0, 0))
    value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, index, 0, 0))
    cached_key.value, cached_value.value = key, value
    cache_index.value = index + 1
    # The new query sees the positions written so far, not the zeros after them (causal by design).
    return key, value, (jnp.arange(length) <= index)[None, None, None, :]


def project_context(params: dict, context: jax.Array, num_heads: int, head_dim: int,
                    names: tuple[str, str, str, str] = DIFFUSERS_PROJECTIONS,
                    dtype: Dtype = jnp.float32) -> tuple[jax.Array, jax.Array]:
  """The key and value ``[B, L, H, Dh]`` that an :class:`Attention` with ``params`` computes from
  ``context [B, L, Dc]`` (for its ``context_kv``)."""
  params = nn.meta.unbox(params)

  def project(name):
    p = params[name]
    y = jnp.dot(context.astype(dtype), p["kernel"].astype(dtype)) + p["bias"].astype(dtype)
    return y.reshape(context.shape[:2] + (num_heads, head_dim))

  return project(names[1]), project(names[2])
