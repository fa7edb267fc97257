"""diffusers ``Transformer2DModel`` (VQ-Diffusion, vectorized path) <-> ``Text2ImageTransformer``.

Flax names already equal the diffusers state-dict keys (``transformer_blocks.3.attn1.to_out.0.weight``
<-> ``transformer_blocks_3/attn1/to_out_0/kernel``), so conversion needs no rename table; only the
official repo's unused ``attn*.mask`` buffers are dropped. Usage::

  fields, params = load_diffusers_transformer("vq-diffusion-ithq/transformer")
  log_p = Text2ImageTransformer(**fields).apply({"params": params}, x_t, t, text_states)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from vqd_jax.interop.state_dict import load_state_dict, params_to_state_dict, state_dict_to_params
from vqd_jax.transformer import fields as transformer_fields
from vqd_jax.transformer.presets import abstract_params

# The official CrossAttention registers a causal-mask buffer that is never used; diffusers ignores it.
IGNORED_KEYS = (r"\.attn\d\.mask$",)


def transformer_config_from_diffusers(config: Mapping[str, Any]) -> dict[str, Any]:
  """``Text2ImageTransformer`` fields from a diffusers ``transformer/config.json`` dict.

  Raises:
    ValueError: when the config is not a VQ-Diffusion (vectorized, AdaLN, approximate-GELU) model.
  """
  def require(key):
    if config.get(key) is None:
      raise ValueError(f"diffusers transformer config lacks {key!r}; is this a VQ-Diffusion "
                       "Transformer2DModel config (num_vector_embeds set)?")
    return config[key]

  num_vector_embeds = require("num_vector_embeds")
  if config.get("activation_fn", "geglu") != "geglu-approximate":
    raise ValueError(f"activation_fn {config.get('activation_fn')!r} is not supported: vqd_jax "
                     "implements VQ-Diffusion's 'geglu-approximate' MLP only.")
  if not config.get("attention_bias", False):
    raise ValueError("attention_bias must be true: VQ-Diffusion attention has biased projections.")
  # Old configs (ITHQ) say norm_type 'layer_norm' (or nothing) plus num_embeds_ada_norm; diffusers
  # turns that into 'ada_norm' at load time.
  norm_type = config.get("norm_type") or "layer_norm"
  if norm_type not in ("ada_norm", "layer_norm") or config.get("num_embeds_ada_norm") is None:
    raise ValueError(f"norm_type {norm_type!r} with num_embeds_ada_norm "
                     f"{config.get('num_embeds_ada_norm')!r} is not VQ-Diffusion's AdaLN(t).")
  for key in ("only_cross_attention", "double_self_attention", "upcast_attention"):
    if config.get(key):
      raise ValueError(f"{key}=true is not supported by vqd_jax's Text2ImageTransformer.")
  sample_size = require("sample_size")
  height, width = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
  return dict(
      num_classes=int(num_vector_embeds) - 1,
      height=int(height), width=int(width),
      num_layers=int(require("num_layers")),
      num_heads=int(require("num_attention_heads")),
      head_dim=int(require("attention_head_dim")),
      cross_attention_dim=int(require("cross_attention_dim")),
      num_embeds_ada_norm=int(config["num_embeds_ada_norm"]),
      mlp_ratio=4,  # diffusers' FeedForward: a fixed x4 hidden width
      dropout=float(config.get("dropout", 0.0)),
  )


# The Text2ImageTransformer fields a diffusers Transformer2DModel config holds (see below). Every
# other architecture field must keep its dataclass default (the official layout) to export.
DIFFUSERS_FIELDS = ("num_classes", "height", "width", "num_layers", "num_heads", "head_dim",
                    "cross_attention_dim", "num_embeds_ada_norm", "dropout")


def check_exportable(fields: Mapping[str, Any]) -> None:
  """Raises ValueError when ``Text2ImageTransformer(**fields)`` has no diffusers equivalent."""
  if fields["height"] != fields["width"]:
    raise ValueError("diffusers' Transformer2DModel has one sample_size: height must equal width.")
  for field, official in transformer_fields.architecture_defaults().items():
    if field in DIFFUSERS_FIELDS or field in transformer_fields.INIT_ONLY:
      continue
    value = fields.get(field, official)
    if value != official:
      raise ValueError(
          f"A model with {field}={value!r} cannot be exported to diffusers' Transformer2DModel, "
          f"which has only {field}={official!r} (its {field.replace('_', ' ')} is a vqd_jax "
          "extension); sample it with python -m vqd_jax.sample.")


def transformer_config_to_diffusers(fields: Mapping[str, Any]) -> dict[str, Any]:
  """The diffusers ``Transformer2DModel`` config of ``Text2ImageTransformer(**fields)``, for export."""
  check_exportable(fields)
  defaults = transformer_fields.architecture_defaults()
  return dict(
      _class_name="Transformer2DModel",
      num_vector_embeds=fields["num_classes"] + 1,
      sample_size=fields["height"],
      num_layers=fields["num_layers"],
      num_attention_heads=fields["num_heads"],
      attention_head_dim=fields["head_dim"],
      cross_attention_dim=fields["cross_attention_dim"],
      num_embeds_ada_norm=fields.get("num_embeds_ada_norm", defaults["num_embeds_ada_norm"]),
      dropout=fields.get("dropout", defaults["dropout"]),
      activation_fn="geglu-approximate",
      attention_bias=True,
      norm_type="ada_norm",
  )


def params_from_diffusers(state_dict: Mapping[str, np.ndarray], template: Any) -> dict[str, Any]:
  """Flax params shaped like ``template`` (params, boxed or not, or ``abstract_params(fields)``)."""
  # Abstract leaves become zero-stride numpy views (nothing allocated): state_dict_to_params reads
  # the target dtype through np.asarray, which a ShapeDtypeStruct does not support.
  template = jax.tree_util.tree_map(
      lambda x: np.broadcast_to(np.zeros((), x.dtype), x.shape), nn.meta.unbox(template))
  return state_dict_to_params(state_dict, template, ignore=IGNORED_KEYS,
                              what="diffusers Transformer2DModel state dict")


def params_to_diffusers(params: Any) -> dict[str, np.ndarray]:
  """A diffusers ``Transformer2DModel`` state dict (float32 numpy) from Flax params."""
  params = nn.meta.unbox(params)
  if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(params)):
    raise TypeError("params_to_diffusers needs concrete arrays, got abstract ShapeDtypeStructs "
                    "(from jax.eval_shape); initialise or restore the params first.")
  return {k: np.asarray(v, np.float32) for k, v in params_to_state_dict(params).items()}


def load_diffusers_transformer(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
  """``(fields, params)`` from a diffusers ``transformer/`` folder (config.json + weights)."""
  config_path = os.path.join(os.fspath(directory), "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path!r} not found: pass the checkpoint's transformer/ folder.")
  with open(config_path, encoding="utf-8") as f:
    fields = transformer_config_from_diffusers(json.load(f))
  params = params_from_diffusers(load_state_dict(directory), abstract_params(fields))
  return fields, params
