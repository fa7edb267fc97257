"""Frozen pretrained encoders behind one call: ``load_encoder(path)``.

  enc = vqd_jax.text.load_encoder("t5-small/")       # a T5 encoder (or a full T5)
  states, mask = enc.encode_text(["a red circle"])     # float32 [B, L, D], bool [B, L]
  enc = vqd_jax.text.load_encoder("clip-vit/", kind="clip_image")
  embeds = enc.encode_images(uint8_images)             # float32 [B, P]

The folder is a local transformers checkpoint (``config.json`` + safetensors, or a torch ``.bin``
read with ``weights_only=True``) with its tokenizer files (a CLIP text tower trained by ``configs/clip.py`` brings its
``word_tokenizer.json``); its ``model_type`` picks the encoder:
``t5`` (T5EncoderModel, T5ForConditionalGeneration), ``clip_text_model``
(CLIPTextModel[WithProjection]), ``clip_vision_model`` (CLIPVisionModel[WithProjection]); a full
``clip`` model holds both towers and gives the text one unless ``kind="clip_image"``. Every encoder
has ``kind`` (its source name in :mod:`vqd_jax.text.embeddings`), ``width``, ``pooled_width``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.text.clip import CLIPTextEncoder, clip_config_from_hf

_TEXT_TYPES = {"t5": "t5", "mt5": "t5", "umt5": "t5", "clip_text_model": "clip_text"}
_KINDS = ("t5", "clip_text", "clip_image")


def check_prompts(prompts: Sequence[str]) -> list[str]:
  """``prompts`` as a non-empty list of strings, else a ValueError saying what was given."""
  if isinstance(prompts, str):
    prompts = [prompts]
  prompts = list(prompts)
  if not prompts:
    raise ValueError("encode_text needs at least one prompt; got an empty list.")
  bad = sorted({type(p).__name__ for p in prompts if not isinstance(p, str)})
  if bad:
    raise ValueError(f"Prompts must be strings; got {', '.join(bad)}.")
  return prompts


def _read_config(path: str) -> dict[str, Any]:
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Encoder folder {path!r} does not exist; pass a local transformers "
                            "checkpoint folder (config.json, weights and tokenizer files).")
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{path!r} has no config.json: it is not a transformers checkpoint "
                            "folder (save one with save_pretrained).")
  with open(config_path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{config_path} is not valid JSON ({e}).") from None


def encoder_kind(path: str | os.PathLike, kind: str | None = None) -> str:
  """The source an encoder folder gives: ``t5``, ``clip_text`` or ``clip_image``."""
  path = os.fspath(path)
  model_type = str(_read_config(path).get("model_type", ""))
  if kind is not None and kind not in _KINDS:
    raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")
  found = {"clip": kind or "clip_text", "clip_vision_model": "clip_image"}.get(
      model_type, _TEXT_TYPES.get(model_type))
  if found is None:
    raise ValueError(f"{path!r} holds a {model_type or 'model without model_type'!r}; "
                     "load_encoder reads T5 encoders, CLIP text models and CLIP vision models.")
  if kind is not None and kind != found and model_type != "clip":
    raise ValueError(f"{path!r} holds a {model_type!r} model, which gives {found!r}, not {kind!r}.")
  return found


def load_encoder(path: str | os.PathLike, kind: str | None = None, dtype: Any = jnp.float32):
  """A frozen encoder from a local transformers folder (see the module docstring).

  Args:
    path: the folder.
    kind: ``t5``, ``clip_text`` or ``clip_image``; only needed to pick a full CLIP model's image
      tower.
    dtype: compute dtype (weights are loaded in float32).
  """
  path = os.fspath(path)
  kind = encoder_kind(path, kind)
  if kind == "t5":
    from vqd_jax.text.t5 import T5TextEncoder  # pylint: disable=import-outside-toplevel
    return T5TextEncoder.from_pretrained(path, dtype=dtype)
  if kind == "clip_image":
    from vqd_jax.text.clip_vision import CLIPImageEncoder  # pylint: disable=import-outside-toplevel
    return CLIPImageEncoder.from_pretrained(path, dtype=dtype)
  return CLIPTextSource.from_pretrained(path, dtype=dtype)


class CLIPTextSource:
  """A frozen CLIP text tower as eDiff-I uses it: per-token states and the projected pooled
  vector (``CLIPTextModelWithProjection.text_embeds``; without a projection, ``pooler_output``).

  Attributes:
    kind: ``clip_text``. width: D. pooled_width: P. max_length: tokens per prompt.
  """
  kind = "clip_text"

  def __init__(self, tokenizer, module: CLIPTextEncoder, params: dict, projection: np.ndarray | None,
               eos_first: bool):
    self.tokenizer = tokenizer
    self.module = module
    self.params = params
    self.projection = None if projection is None else jnp.asarray(projection)
    self.eos_first = eos_first
    self.width = module.config.hidden_size
    self.pooled_width = self.width if projection is None else int(projection.shape[1])
    self.max_length = tokenizer.max_length
    self._forward = jax.jit(self._states_and_pooled)

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, dtype: Any = jnp.float32,
                      max_length: int | None = None) -> "CLIPTextSource":
    from vqd_jax.interop import clip as clip_interop  # pylint: disable=import-outside-toplevel
    from vqd_jax.interop import state_dict as sd  # pylint: disable=import-outside-toplevel
    from vqd_jax.text.clip_tokenizer import load_clip_tokenizer  # pylint: disable=import-outside-toplevel
    path = os.fspath(path)
    config = _read_config(path)
    positions = clip_config_from_hf(config).max_position_embeddings
    module, params = clip_interop.load_clip_text_encoder(path, dtype=dtype)
    state = sd.load_state_dict(sd.find_weights_file(path))
    projection = state.get("text_projection.weight")
    text_config = config.get("text_config", config)
    eos_first = text_config.get("eos_token_id", 2) != 2  # transformers' rule for the pooled token
    tokenizer = load_clip_tokenizer(path, max_length=max_length or positions)
    return cls(tokenizer, module, params,
               None if projection is None else np.asarray(projection, np.float32).T, eos_first)

  def _states_and_pooled(self, params, ids, mask):
    states = self.module.apply({"params": params}, ids, mask, normalize=False)
    # transformers pools the first EOS (new configs) or the highest id (legacy eos_token_id=2).
    eos = jnp.argmax(ids == self.tokenizer.eos_id, axis=1) if self.eos_first else jnp.argmax(ids, 1)
    pooled = jnp.take_along_axis(states, eos[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    if self.projection is not None:
      pooled = pooled @ self.projection
    return states.astype(jnp.float32), pooled

  def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(states float32 [B, L, D], mask bool [B, L], pooled float32 [B, P])``."""
    ids, mask = self.tokenizer(check_prompts(prompts))
    states, pooled = self._forward(self.params, jnp.asarray(ids), jnp.asarray(mask))
    return np.asarray(states), mask, np.asarray(pooled)

  def encode_text(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(states float32 [B, L, D], mask bool [B, L])`` (HF's ``last_hidden_state``)."""
    states, mask, _ = self.encode(prompts)
    return states, mask


def source_layout(encoder, length: int, drop_rate: float):
  """The :class:`~vqd_jax.text.embeddings.EmbeddingSource` that ``encoder``'s outputs fill."""
  from vqd_jax.text.embeddings import EmbeddingSource  # pylint: disable=import-outside-toplevel
  if encoder.kind == "clip_image":
    return EmbeddingSource("clip_image", pooled_width=int(encoder.width), drop_rate=drop_rate)
  return EmbeddingSource(encoder.kind, width=int(encoder.width), length=int(length),
                         pooled_width=int(encoder.pooled_width or 0), drop_rate=drop_rate)


def source_entries(encoder, length: int, prompts: Sequence[str] | None = None,
                   images: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Host side: one source's batch entries (:mod:`vqd_jax.text.embeddings`) for ``prompts``
  (text encoders) or uint8 ``images [B, H, W, 3]`` (``clip_image``)."""
  from vqd_jax.text.embeddings import pad_to_length  # pylint: disable=import-outside-toplevel
  name = encoder.kind
  if name == "clip_image":
    if images is None:
      raise ValueError("The clip_image source needs images.")
    return {f"{name}_pooled": np.asarray(encoder.encode_images(images), np.float32)}
  if prompts is None:
    raise ValueError(f"The {name} source needs prompts.")
  if name == "clip_text":
    states, mask, pooled = encoder.encode(prompts)
  else:
    (states, mask), pooled = encoder.encode_text(prompts), None
  states, mask = pad_to_length(np.asarray(states, np.float32), np.asarray(mask, bool), length)
  entries = {f"{name}_states": states, f"{name}_mask": mask}
  if pooled is not None:
    entries[f"{name}_pooled"] = np.asarray(pooled, np.float32)
  return entries


def load_source_encoders(paths: dict[str, str], what: str = "the run") -> dict[str, Any]:
  """``{name: frozen encoder}`` for ``{name: folder}`` (a source without a folder is left out)."""
  encoders = {}
  for name, path in paths.items():
    if not path:
      continue
    if not os.path.isdir(path):
      raise FileNotFoundError(
          f"The {name} encoder of {what} was read from {path!r}, which does not exist now; pass "
          f"its folder again with --config.embeddings.{name}.path=DIR (or embedding_paths=).")
    encoders[name] = load_encoder(path, kind=name)
  return encoders


def embed_inputs(encoders: dict[str, Any], sources, prompts: Sequence[str] | None = None,
                 images: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Host side: the batch entries of every source that can be computed from ``prompts`` (text
  sources) and ``images`` (``clip_image``); the others are left out and read as their nulls."""
  entries: dict[str, np.ndarray] = {}
  for s in sources:
    encoder = encoders.get(s.name)
    if encoder is None:
      continue
    if s.name == "clip_image":
      if images is not None:
        entries.update(source_entries(encoder, 0, images=images))
    elif prompts is not None:
      entries.update(source_entries(encoder, s.length, prompts=prompts))
  return entries
