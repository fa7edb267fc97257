"""Writes trained CLIP text towers as Hugging Face ``CLIPTextModelWithProjection`` folders.

The folder (``config.json`` + ``model.safetensors`` with ``text_model.*`` and
``text_projection.weight``) loads with :func:`vqd_jax.interop.clip.load_clip_text_encoder` and
with transformers' ``CLIPTextModelWithProjection.from_pretrained``. A word tokenizer travels
beside it as ``word_tokenizer.json`` (not ``tokenizer.json``, which transformers would read as its
own tokenizer format). Image towers: :func:`vqd_jax.interop.clip_vision.save_clip_vision_encoder`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import numpy as np

from vqd_jax.interop.clip import clip_params_to_state_dict
from vqd_jax.text.clip import CLIPTextConfig
from vqd_jax.text.clip_tokenizer import WORD_TOKENIZER_FILE


def text_config_to_hf(config: CLIPTextConfig, projection_dim: int | None, bos_id: int, eos_id: int,
                      pad_id: int) -> dict[str, Any]:
  """A ``CLIPTextConfig`` ``config.json`` dict (``WithProjection`` when ``projection_dim``)."""
  arch = "CLIPTextModelWithProjection" if projection_dim else "CLIPTextModel"
  out = {"architectures": [arch], "model_type": "clip_text_model", **dataclasses.asdict(config),
         "bos_token_id": int(bos_id), "eos_token_id": int(eos_id), "pad_token_id": int(pad_id)}
  if projection_dim:
    out["projection_dim"] = int(projection_dim)
  return out


def save_clip_text_encoder(directory: str | os.PathLike, config: CLIPTextConfig, params: Any,
                           projection: Any = None, tokenizer: Any = None, *, bos_id: int,
                           eos_id: int, pad_id: int) -> str:
  """Writes the text tower; returns the folder.

  Args:
    directory: created if missing; existing files are replaced.
    config: the tower's config; params: its ``CLIPTextEncoder`` params (boxed or plain).
    projection: the ``text_projection`` kernel ``[D, E]`` (Flax layout), or None.
    tokenizer: an object with ``save(path)`` (a ``WordTokenizer``), written beside the weights.
    bos_id, eos_id, pad_id: the tokenizer's special ids; transformers pools the text at the first
      ``eos_id`` (an ``eos_token_id`` of 2 would select its legacy arg-max pooling instead).
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  state = clip_params_to_state_dict(nn.meta.unbox(params))
  projection_dim = None
  if projection is not None:
    kernel = np.asarray(nn.meta.unbox(projection), np.float32)
    state["text_projection.weight"] = np.ascontiguousarray(kernel.T)
    projection_dim = kernel.shape[1]
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(text_config_to_hf(config, projection_dim, bos_id, eos_id, pad_id), f, indent=2)
  save_file({k: np.asarray(v, np.float32) for k, v in state.items()},
            os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  if tokenizer is not None:
    tokenizer.save(os.path.join(directory, WORD_TOKENIZER_FILE))
  return directory
