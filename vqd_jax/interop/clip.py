"""Loads Hugging Face CLIP text checkpoints (``CLIPTextModel`` folders) into :mod:`vqd_jax.text.clip`.

A component folder holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``, read with
``torch.load(weights_only=True)``). Hub checkpoints prefix every key with ``text_model.``;
transformers >= 5 saves ``CLIPTextModel`` without it; both are accepted, as is a full ``CLIPModel``
folder (its vision tower and projections are skipped). A diffusers pipeline root that has a
``text_encoder/`` sub-folder may be passed directly.
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
from vqd_jax.text.clip import CLIPTextEncoder, clip_config_from_hf

# HF key -> our key, before the generic "a.0.b" -> "a_0/b" conversion.
CLIP_TEXT_RENAMES = ((r"^text_model\.", ""),)
# Buffers and the parts of a full CLIPModel that the text transformer does not use.
CLIP_TEXT_IGNORE = (r"position_ids$", r"^vision_model\.", r"^visual_projection\.",
                    r"^text_projection\.", r"^logit_scale$")


def resolve_component_dir(path: str | os.PathLike, component: str) -> str:
  """``path`` itself when it holds ``config.json``, else ``path/component`` when that does.

  Raises:
    FileNotFoundError: naming the folder and the missing file.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"CLIP {component} folder {path!r} does not exist.")
  if os.path.exists(os.path.join(path, "config.json")):
    return path
  nested = os.path.join(path, component)
  if os.path.exists(os.path.join(nested, "config.json")):
    return nested
  raise FileNotFoundError(
      f"No config.json in {path!r} (nor in {nested!r}): expected a Hugging Face CLIPTextModel folder "
      "saved with save_pretrained (config.json + model.safetensors or pytorch_model.bin).")


def load_clip_text_encoder(path: str | os.PathLike, dtype: Any = jnp.float32,
                           param_dtype: Any = jnp.float32) -> tuple[CLIPTextEncoder, dict]:
  """Builds the encoder from a local checkpoint folder.

  Args:
    path: a ``CLIPTextModel`` folder, or a diffusers pipeline root with ``text_encoder/``.
    dtype: compute dtype; param_dtype: dtype the weights are stored in.

  Returns:
    ``(module, params)`` where ``params`` is the plain ``params`` collection
    (use ``module.apply({"params": params}, ids)`` or :func:`vqd_jax.text.clip.encode_prompts`).

  Raises:
    FileNotFoundError: the folder, ``config.json`` or the weights file is missing.
    ValueError: the weights do not match the config (names every offending key).
  """
  directory = resolve_component_dir(path, "text_encoder")
  with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
    config = clip_config_from_hf(json.load(f))
  module = CLIPTextEncoder(config, dtype=dtype, param_dtype=param_dtype)
  weights_path = sd.find_weights_file(directory)
  state = sd.load_state_dict(weights_path)
  shapes = jax.eval_shape(
      lambda: nn.meta.unbox(module.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]))
  # Zero-stride numpy stand-ins: shape and dtype without allocating (state_dict_to_params reads the
  # template's dtype through np.asarray, which would turn a ShapeDtypeStruct into dtype=object).
  template = jax.tree_util.tree_map(
      lambda s: np.broadcast_to(np.zeros((), np.dtype(s.dtype)), s.shape), shapes)
  params = sd.state_dict_to_params(state, template, rules=CLIP_TEXT_RENAMES, ignore=CLIP_TEXT_IGNORE,
                                   what=f"CLIP text checkpoint {weights_path!r}")
  return module, jax.tree_util.tree_map(lambda x: jnp.asarray(x, param_dtype), params)


def clip_params_to_state_dict(params: dict, prefix: str = "text_model.") -> dict[str, np.ndarray]:
  """Our params -> HF ``CLIPTextModel`` keys (hub layout, ``text_model.`` prefix by default)."""
  return {prefix + k: v for k, v in sd.params_to_state_dict(nn.meta.unbox(params)).items()}
