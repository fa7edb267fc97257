"""The CLIP text transformer in Flax, laid out like Hugging Face's ``CLIPTextModel``.

VQ-Diffusion conditions on the per-token output of CLIP's final LayerNorm (no text projection),
L2-normalised per token. Submodule names follow the HF checkpoint keys (``embeddings.token_embedding``,
``encoder.layers.{i}.self_attn.q_proj``, ``mlp.fc1``, ``final_layer_norm``) so that
:func:`vqd_jax.interop.state_dict.state_dict_to_params` converts checkpoints by name.

Shapes: B batch, L tokens (<= max_position_embeddings), D hidden_size, H heads, K head dim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqd_jax.layers import HF_PROJECTIONS, Attention, approximate_gelu, dense, embed, layer_norm

_HF_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                    num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                    layer_norm_eps=1e-5)


# HF ACT2FN names -> JAX. "gelu" is the exact (erf) GELU; the tanh form has its own names.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": approximate_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """The fields of a HF ``CLIPTextConfig`` that shape the text transformer."""
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5


def clip_config_from_hf(config_dict: Mapping[str, Any]) -> CLIPTextConfig:
  """Reads a HF ``config.json`` dict of a ``CLIPTextModel`` (or a full ``CLIPModel``: its
  ``text_config`` is used). Missing keys take HF's ``CLIPTextConfig`` defaults (openai ViT-B/32)."""
  if "text_config" in config_dict and isinstance(config_dict["text_config"], Mapping):
    config_dict = config_dict["text_config"]
  values = {k: config_dict.get(k, default) for k, default in _HF_DEFAULTS.items()}
  values = {k: v if v is not None else _HF_DEFAULTS[k] for k, v in values.items()}
  if values["hidden_act"] not in ACTIVATIONS:
    raise ValueError(f"CLIP config hidden_act={values['hidden_act']!r} is not supported; "
                     f"expected one of {sorted(ACTIVATIONS)}.")
  if values["hidden_size"] % values["num_attention_heads"]:
    raise ValueError(f"CLIP config hidden_size={values['hidden_size']} is not divisible by "
                     f"num_attention_heads={values['num_attention_heads']}.")
  return CLIPTextConfig(**values)


class CLIPTextEmbeddings(nn.Module):
  """Token plus learned absolute position embeddings: ``[B, L]`` ids -> ``[B, L, D]``."""
  config: CLIPTextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tokens = embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), name="token_embedding",
                   **kw)(ids)
    positions = embed(cfg.max_position_embeddings, cfg.hidden_size, ("length", "embed"),
                      name="position_embedding", **kw)(jnp.arange(ids.shape[-1]))
    return tokens + positions[None]


class CLIPMLP(nn.Module):
  """``fc2(act(fc1(x)))``: ``[B, L, D]`` -> ``[B, L, D]``."""
  config: CLIPTextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(cfg.intermediate_size, ("embed", "mlp"), name="fc1", **kw)(x)
    h = ACTIVATIONS[cfg.hidden_act](h)
    return dense(cfg.hidden_size, ("mlp", "embed"), name="fc2", **kw)(h)


class CLIPEncoderLayer(nn.Module):
  """Pre-LN block: ``x + attn(ln1(x))`` (causal self-attention; ``causal=False`` for the image
  tower) then ``x + mlp(ln2(x))``."""
  config: CLIPTextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  causal: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    """x: ``[B, L, D]``; key_mask: ``[B, L]`` bool (True = attend) or None -> ``[B, L, D]``."""
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    heads = cfg.num_attention_heads
    h = layer_norm(name="layer_norm1", epsilon=cfg.layer_norm_eps, **kw)(x)
    x = x + Attention(heads, cfg.hidden_size // heads, causal=self.causal,
                      projection_names=HF_PROJECTIONS, name="self_attn", **kw)(h, key_mask=key_mask)
    h = layer_norm(name="layer_norm2", epsilon=cfg.layer_norm_eps, **kw)(x)
    return x + CLIPMLP(cfg, name="mlp", **kw)(h)


class CLIPEncoder(nn.Module):
  """The stack of blocks, named ``layers_{i}`` after the torch keys ``layers.{i}``."""
  config: CLIPTextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  causal: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    for i in range(self.config.num_hidden_layers):
      x = CLIPEncoderLayer(self.config, dtype=self.dtype, param_dtype=self.param_dtype,
                           causal=self.causal, name=f"layers_{i}")(x, key_mask)
    return x


class CLIPTextEncoder(nn.Module):
  """CLIP text transformer: ids ``[B, L]`` -> per-token states ``[B, L, D]``.

  ``normalize=True`` (VQ-Diffusion's conditioning) divides every token's state by its L2 norm;
  ``normalize=False`` returns HF's ``last_hidden_state`` (after ``final_layer_norm``) unchanged.

  ``attention_mask`` mirrors HF's argument (``[B, L]``, True/1 = real token). VQ-Diffusion (official
  and diffusers) passes none: pad tokens are then ordinary tokens that only see what precedes them.
  """
  config: CLIPTextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, attention_mask: jax.Array | None = None,
               normalize: bool = True) -> jax.Array:
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if ids.ndim != 2:
      raise ValueError(f"CLIP token ids must be [batch, length]; got shape {ids.shape}.")
    if ids.shape[1] > cfg.max_position_embeddings:
      raise ValueError(f"{ids.shape[1]} tokens exceed the encoder's max_position_embeddings="
                       f"{cfg.max_position_embeddings}; tokenize with max_length <= that.")
    x = CLIPTextEmbeddings(cfg, name="embeddings", **kw)(ids)
    x = CLIPEncoder(cfg, name="encoder", **kw)(x, attention_mask)
    x = layer_norm(name="final_layer_norm", epsilon=cfg.layer_norm_eps, **kw)(x)
    if normalize:
      x32 = x.astype(jnp.float32)
      norm = jnp.linalg.norm(x32, axis=-1, keepdims=True)
      x = (x32 / jnp.maximum(norm, 1e-12)).astype(self.dtype)
    return x


def encode_prompts(module: CLIPTextEncoder, params: Mapping[str, Any], ids: jax.Array,
                   mask: jax.Array | None = None, normalize: bool = True) -> jax.Array:
  """Text states ``[B, L, D]`` for token ids ``[B, L]`` as VQ-Diffusion consumes them.

  Args:
    module: the encoder.
    params: its ``params`` collection (the tree under ``"params"``), boxed or plain.
    ids: int ``[B, L]`` from :class:`vqd_jax.text.clip_tokenizer.CLIPTokenizerWrapper`.
    mask: optional bool ``[B, L]`` key-padding mask. Leave it None to reproduce VQ-Diffusion, which
      runs CLIP without one (states at pad positions then differ from the masked variant; states at
      real tokens are the same either way because attention is causal).
    normalize: L2-normalise each token's state (VQ-Diffusion); False returns the raw states.
  """
  return module.apply({"params": params}, jnp.asarray(ids, jnp.int32),
                      None if mask is None else jnp.asarray(mask, bool), normalize=normalize)
