"""Loads Hugging Face CLIP image towers into :mod:`vqd_jax.text.clip_vision` (and writes them back).

A folder holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``, read with
``torch.load(weights_only=True)``): a ``CLIPVisionModelWithProjection`` (keys ``vision_model.*`` and
``visual_projection.weight``) or a full ``CLIPModel`` (its text tower and ``logit_scale`` are
skipped). A diffusers pipeline root with an ``image_encoder/`` sub-folder may be passed directly.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.interop import state_dict as sd
from vqd_jax.text.clip_vision import CLIPVisionConfig, CLIPVisionEncoder, clip_vision_config_from_hf

# transformers >= 5 saves a bare CLIPVisionModel without the "vision_model." prefix.
CLIP_VISION_RENAMES = ((r"^(?!vision_model\.|visual_projection\.)", "vision_model."),)
CLIP_VISION_IGNORE = (r"position_ids$", r"^text_model\.", r"^text_projection\.", r"^logit_scale$",
                      r"^logit_bias$")
_MODEL_TYPES = ("clip_vision_model", "clip")


def vision_component_dir(path: str | os.PathLike) -> str:
  """``path`` when it holds ``config.json``, else ``path/image_encoder`` when that does."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"CLIP image tower folder {path!r} does not exist.")
  for directory in (path, os.path.join(path, "image_encoder")):
    if os.path.exists(os.path.join(directory, "config.json")):
      return directory
  raise FileNotFoundError(
      f"No config.json in {path!r} (nor in its image_encoder/): expected a Hugging Face "
      "CLIPVisionModelWithProjection or CLIPModel folder saved with save_pretrained (config.json + "
      "model.safetensors or pytorch_model.bin).")


def read_vision_config(directory: str) -> CLIPVisionConfig:
  """The tower's config from ``directory/config.json`` (a CLIP vision or full CLIP model)."""
  with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  model_type = config.get("model_type")
  if model_type not in _MODEL_TYPES:
    raise ValueError(f"{directory!r} holds a {model_type!r} model; the CLIP image tower loads "
                     f"model_type {' or '.join(_MODEL_TYPES)} (CLIPVisionModelWithProjection, "
                     "CLIPModel).")
  return clip_vision_config_from_hf(config)


def param_template(module: nn.Module, *example: Any) -> dict:
  """Zero-stride numpy stand-ins of the module's params: shapes and dtypes, nothing allocated."""
  shapes = jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.key(0), *example)["params"]))
  return jax.tree_util.tree_map(
      lambda s: np.broadcast_to(np.zeros((), np.dtype(s.dtype)), s.shape), shapes)


def load_clip_vision_encoder(path: str | os.PathLike, dtype: Any = jnp.float32,
                             param_dtype: Any = jnp.float32) -> tuple[CLIPVisionEncoder, dict]:
  """Builds the image tower from a local checkpoint folder.

  Args:
    path: a ``CLIPVisionModelWithProjection`` or ``CLIPModel`` folder, or a pipeline root with
      ``image_encoder/``.
    dtype: compute dtype; param_dtype: dtype the weights are stored in.

  Returns:
    ``(module, params)``: ``module.apply({"params": params}, pixels)`` gives
    ``(last_hidden_state, image_embeds)``.

  Raises:
    FileNotFoundError: the folder, ``config.json`` or the weights file is missing.
    ValueError: not a CLIP vision model, no projection, or weights that do not match the config.
  """
  directory = vision_component_dir(path)
  config = read_vision_config(directory)
  module = CLIPVisionEncoder(config, dtype=dtype, param_dtype=param_dtype)
  weights_path = sd.find_weights_file(directory)
  state = sd.load_state_dict(weights_path)
  if "visual_projection.weight" not in state:
    raise ValueError(f"{weights_path!r} has no visual_projection.weight (a CLIPVisionModel without "
                     "projection?); save a CLIPVisionModelWithProjection or a full CLIPModel.")
  side = config.image_size
  template = param_template(module, jnp.zeros((1, side, side, config.num_channels), dtype))
  params = sd.state_dict_to_params(state, template, rules=CLIP_VISION_RENAMES,
                                   ignore=CLIP_VISION_IGNORE,
                                   what=f"CLIP vision checkpoint {weights_path!r}")
  return module, jax.tree_util.tree_map(lambda x: jnp.asarray(x, param_dtype), params)


def clip_vision_params_to_state_dict(params: dict) -> dict[str, np.ndarray]:
  """Our params -> ``CLIPVisionModelWithProjection`` keys (``vision_model.*``,
  ``visual_projection.weight``)."""
  return sd.params_to_state_dict(nn.meta.unbox(params))


def save_clip_vision_encoder(directory: str | os.PathLike, config: CLIPVisionConfig, params: dict,
                             processor_config: dict | None = None) -> str:
  """Writes ``config.json`` + ``model.safetensors`` (+ ``preprocessor_config.json``) in the
  ``CLIPVisionModelWithProjection`` layout; returns the folder."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config.to_hf(), f, indent=2)
  state = clip_vision_params_to_state_dict(params)
  save_file({k: np.asarray(v, np.float32) for k, v in state.items()},
            os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  if processor_config is not None:
    with open(os.path.join(directory, "preprocessor_config.json"), "w", encoding="utf-8") as f:
      json.dump(processor_config, f, indent=2)
  return directory
