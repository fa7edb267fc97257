"""The T5 encoder in Flax, laid out like Hugging Face's ``T5EncoderModel``, and its frozen text
source :class:`T5TextEncoder`.

Covers T5 v1.0 (``feed_forward_proj="relu"``) and T5 v1.1 / FLAN-T5 / mT5 (``"gated-gelu"``, the
tanh GELU). Every block is ``x + attn(rms(x))`` then ``x + ffn(rms(x))``; attention is unscaled (T5
folds 1/√d_kv into its initialisation) and biased by a learned table over bucketed relative
positions that lives in block 0 and is shared by every block. Submodule names follow the HF keys
(``shared``, ``encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}``, ``...relative_attention_bias``,
``layer.1.DenseReluDense.{wi,wo}`` or ``{wi_0,wi_1,wo}``, ``encoder.final_layer_norm``) so that
:func:`vqd_jax.interop.state_dict.state_dict_to_params` converts checkpoints by name.

Shapes: B batch, L tokens, D d_model, H heads, K d_kv (independent of D), F d_ff.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.layers import ACTIVATION_AXES, dense, embed
from vqd_jax.text.clip import ACTIVATIONS

Dtype = Any
_HF_DEFAULTS = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    layer_norm_epsilon=1e-6, feed_forward_proj="relu")
# Same architecture as T5 v1.1; umt5 is not (it has a relative-position table in every block).
_MODEL_TYPES = ("t5", "mt5")


@dataclasses.dataclass(frozen=True)
class T5EncoderConfig:
  """The fields of a HF ``T5Config`` that shape the encoder (defaults: ``t5-small``)."""
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"

  def __post_init__(self):
    parts = self.feed_forward_proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or parts[-1] not in ACTIVATIONS:
      raise ValueError(f"T5 feed_forward_proj={self.feed_forward_proj!r} is not supported; use "
                       f"'ACT' or 'gated-ACT' with ACT one of {sorted(ACTIVATIONS)} (T5 v1.0: "
                       "'relu', T5 v1.1 / FLAN-T5: 'gated-gelu').")
    if self.relative_attention_num_buckets < 4 or self.relative_attention_max_distance < 2:
      raise ValueError("T5 needs relative_attention_num_buckets >= 4 and "
                       "relative_attention_max_distance >= 2.")

  @property
  def gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def activation(self) -> str:
    """The HF activation name; ``gated-gelu`` means the tanh GELU (``gelu_new``), as in HF."""
    if self.feed_forward_proj == "gated-gelu":
      return "gelu_new"
    return self.feed_forward_proj.split("-")[-1]


def t5_config_from_hf(config_dict: Mapping[str, Any]) -> T5EncoderConfig:
  """Reads a HF ``config.json`` dict of a ``T5EncoderModel`` or a full
  ``T5ForConditionalGeneration`` (``T5Config``; mT5 too). Missing keys take HF's ``T5Config``
  defaults.

  Raises:
    ValueError: another model type, or a ``feed_forward_proj`` this encoder does not implement.
  """
  model_type = config_dict.get("model_type")
  if model_type is not None and model_type not in _MODEL_TYPES:
    raise ValueError(f"config.json has model_type={model_type!r}; the T5 encoder reads "
                     f"{' or '.join(_MODEL_TYPES)} checkpoints.")
  values = {k: config_dict.get(k, default) for k, default in _HF_DEFAULTS.items()}
  values = {k: v if v is not None else _HF_DEFAULTS[k] for k, v in values.items()}
  return T5EncoderConfig(**values)


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int,
                              max_distance: int) -> np.ndarray:
  """int32 ``[Lq, Lk]``: the bidirectional T5 bucket of ``key - query`` for every pair.

  Half the buckets are for keys after the query; in each half, distances below ``num_buckets // 4``
  get their own bucket and larger ones share log-spaced buckets up to ``max_distance``. Computed in
  float32 like the original (Mesh TensorFlow) code, so bucket edges land where the checkpoints'.
  """
  relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
  half = num_buckets // 2
  exact = half // 2
  distance = np.abs(relative)
  scaled = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(exact))
  scaled = scaled / np.float32(np.log(max_distance / exact)) * np.float32(half - exact)
  far = np.minimum(exact + scaled.astype(np.int64), half - 1)
  bucket = np.where(relative > 0, half, 0) + np.where(distance < exact, distance, far)
  return bucket.astype(np.int32)


def rms_norm(*, name: str, epsilon: float, dtype: Dtype, param_dtype: Dtype) -> nn.RMSNorm:
  """T5's LayerNorm: ``x / sqrt(mean(x²) + eps) · scale`` (no mean, no bias), statistics in
  float32. Its ``scale`` leaf is what the converter maps HF's ``weight`` to."""
  return nn.RMSNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name,
                    scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)))


def unscaled_attention(query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array,
                       key_mask: jax.Array | None) -> jax.Array:
  """softmax(QKᵀ + bias) V with masked keys excluded (no 1/√K: T5 is trained without it).

  query, key, value: ``[B, L, H, K]``; bias: ``[1, H, L, L]``; key_mask: ``[B, L]`` bool (True =
  attend) or None. Returns ``[B, L, H, K]`` in the value's dtype.
  """
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
  logits = logits + bias.astype(jnp.float32)
  if key_mask is not None:  # the most negative float, as HF does: an all-pad row stays finite
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, value)


class T5Attention(nn.Module):
  """Bias-free ``q, k, v, o`` projections around :func:`unscaled_attention`.

  The block that owns the relative-position table (``has_relative_bias``, block 0) computes the
  bias ``[1, H, L, L]``; the others receive it.
  """
  config: T5EncoderConfig
  has_relative_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None, position_bias: jax.Array | None
               ) -> tuple[jax.Array, jax.Array]:
    """x: ``[B, L, D]``; key_mask: ``[B, L]`` bool or None; position_bias: ``[1, H, L, L]`` or None
    (block 0) -> (``[B, L, D]``, the bias)."""
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False)
    inner = cfg.num_heads * cfg.d_kv
    split = lambda y: y.reshape(y.shape[:2] + (cfg.num_heads, cfg.d_kv))
    q, k, v = (split(dense(inner, ("embed", "heads"), name=n, **kw)(x)) for n in "qkv")
    if self.has_relative_bias:
      length = x.shape[1]
      buckets = relative_position_buckets(length, length, cfg.relative_attention_num_buckets,
                                          cfg.relative_attention_max_distance)
      # A tiny [buckets, H] table: replicated, not sharded; read in float32 like the logits.
      table = embed(cfg.relative_attention_num_buckets, cfg.num_heads, (None, None),
                    name="relative_attention_bias", dtype=jnp.float32,
                    param_dtype=self.param_dtype)
      position_bias = table(jnp.asarray(buckets)).transpose(2, 0, 1)[None]
    elif position_bias is None:
      raise ValueError("A T5 block without the relative-position table needs block 0's bias.")
    out = unscaled_attention(q, k, v, position_bias, key_mask)
    out = out.reshape(out.shape[:2] + (inner,))
    out = dense(x.shape[-1], ("heads", "embed"), name="o", **kw)(out)
    return out, position_bias


class T5SelfAttentionLayer(nn.Module):
  """HF ``layer.0``: ``x + SelfAttention(layer_norm(x))``."""
  config: T5EncoderConfig
  has_relative_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None, position_bias: jax.Array | None
               ) -> tuple[jax.Array, jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = rms_norm(name="layer_norm", epsilon=self.config.layer_norm_epsilon, **kw)(x)
    out, position_bias = T5Attention(self.config, self.has_relative_bias, name="SelfAttention",
                                     **kw)(h, key_mask, position_bias)
    return x + out, position_bias


class T5DenseReluDense(nn.Module):
  """``wo(act(wi(x)))`` (v1.0) or ``wo(act(wi_0(x)) · wi_1(x))`` (gated): ``[B, L, D]`` -> same."""
  config: T5EncoderConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False)
    act = ACTIVATIONS[cfg.activation]
    if cfg.gated:
      h = act(dense(cfg.d_ff, ("embed", "mlp"), name="wi_0", **kw)(x))
      h = h * dense(cfg.d_ff, ("embed", "mlp"), name="wi_1", **kw)(x)
    else:
      h = act(dense(cfg.d_ff, ("embed", "mlp"), name="wi", **kw)(x))
    return dense(cfg.d_model, ("mlp", "embed"), name="wo", **kw)(h)


class T5FeedForwardLayer(nn.Module):
  """HF ``layer.1``: ``x + DenseReluDense(layer_norm(x))``."""
  config: T5EncoderConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = rms_norm(name="layer_norm", epsilon=self.config.layer_norm_epsilon, **kw)(x)
    return x + T5DenseReluDense(self.config, name="DenseReluDense", **kw)(h)


class T5Block(nn.Module):
  """HF ``block.{i}``: ``layer_0`` (self-attention) then ``layer_1`` (feed-forward)."""
  config: T5EncoderConfig
  has_relative_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None, position_bias: jax.Array | None
               ) -> tuple[jax.Array, jax.Array]:
    """x: ``[B, L, D]`` -> (``[B, L, D]``, the shared bias ``[1, H, L, L]``)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x, position_bias = T5SelfAttentionLayer(self.config, self.has_relative_bias, name="layer_0",
                                            **kw)(x, key_mask, position_bias)
    x = T5FeedForwardLayer(self.config, name="layer_1", **kw)(x)
    return nn.with_logical_constraint(x, ACTIVATION_AXES), position_bias


class T5Stack(nn.Module):
  """HF ``encoder``: the blocks ``block_{i}`` and ``final_layer_norm``."""
  config: T5EncoderConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    """x: ``[B, L, D]`` embeddings; key_mask: ``[B, L]`` bool or None -> ``[B, L, D]``."""
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    position_bias = None
    for i in range(cfg.num_layers):
      x, position_bias = T5Block(cfg, has_relative_bias=i == 0, name=f"block_{i}", **kw)(
          x, key_mask, position_bias)
    return rms_norm(name="final_layer_norm", epsilon=cfg.layer_norm_epsilon, **kw)(x)


class T5Encoder(nn.Module):
  """T5 encoder: ids ``[B, L]`` int32 + mask ``[B, L]`` bool -> states ``[B, L, D]`` (HF's
  ``last_hidden_state``, after the final norm), in ``dtype``.

  Keys where ``mask`` is False are never attended to (the states at those positions are
  meaningless). ``dtype=bfloat16`` computes in bfloat16 with norms, logits and softmax in float32.
  """
  config: T5EncoderConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    if ids.ndim != 2:
      raise ValueError(f"T5 token ids must be [batch, length]; got shape {ids.shape}.")
    if mask is not None and mask.shape != ids.shape:
      raise ValueError(f"The T5 mask must have the ids' shape {ids.shape}; got {mask.shape}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = embed(self.config.vocab_size, self.config.d_model, ("vocab", "embed"), name="shared",
              **kw)(ids)
    key_mask = None if mask is None else mask.astype(bool)
    return T5Stack(self.config, name="encoder", **kw)(x, key_mask)


class T5TextEncoder:
  """A frozen T5 encoder with its tokenizer: prompts -> per-token states and their mask.

  Attributes:
    kind: ``t5`` (its source name in :mod:`vqd_jax.text.embeddings`). width: D. pooled_width: None
    (T5 has no pooled output). max_length: the tokenizer's cap on tokens per prompt, or None.
  """
  kind = "t5"
  pooled_width = None

  def __init__(self, tokenizer: Any, module: T5Encoder, params: Mapping[str, Any]):
    """``tokenizer``: a :class:`vqd_jax.text.t5_tokenizer.T5TokenizerWrapper` (any callable
    ``prompts -> (ids [B, L], mask [B, L])``); ``params``: the module's ``params`` collection."""
    vocab = getattr(tokenizer, "vocab_size", 0)
    if vocab > module.config.vocab_size:
      raise ValueError(f"The tokenizer has {vocab} tokens but the encoder only "
                       f"{module.config.vocab_size} embeddings; they come from different models.")
    self.tokenizer = tokenizer
    self.module = module
    self.params = params
    self.width = module.config.d_model
    self.max_length = getattr(tokenizer, "max_length", None)
    self._forward = jax.jit(self._states)  # compiled once per (batch, length)

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, dtype: Dtype = jnp.float32,
                      max_length: int | None = None) -> "T5TextEncoder":
    """Loads a local ``T5EncoderModel`` or ``T5ForConditionalGeneration`` folder (``config.json``,
    weights and tokenizer files). ``dtype`` is the compute dtype (weights stay float32);
    ``max_length`` caps the tokens per prompt (None: the longest prompt of each batch)."""
    from vqd_jax.interop.t5 import load_t5_encoder  # pylint: disable=import-outside-toplevel
    from vqd_jax.text import t5_tokenizer  # pylint: disable=import-outside-toplevel
    module, params = load_t5_encoder(path, dtype=dtype)
    return cls(t5_tokenizer.T5TokenizerWrapper.from_pretrained(path, max_length=max_length),
               module, params)

  def _states(self, params, ids, mask):
    states = self.module.apply({"params": params}, ids, mask).astype(jnp.float32)
    # Pad states depend on how far the batch was padded: zeros keep a prompt's encoding the same
    # whatever its batch mates.
    return jnp.where(mask[..., None], states, 0.0)

  def encode_text(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(states float32 [B, L, D], mask bool [B, L])``; states are zero where mask is False.

    Raises:
      ValueError: an empty list of prompts or a prompt that is not a string.
    """
    ids, mask = self.tokenizer(prompts)
    states = self._forward(self.params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool))
    return np.asarray(states), np.asarray(mask, bool)
