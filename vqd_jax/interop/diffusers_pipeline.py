"""Reads a diffusers VQ-Diffusion pipeline folder (``microsoft/vq-diffusion-ithq`` layout) from disk.

Layout (``model_index.json`` names every component; each is a sub-folder)::

  model_index.json
  vqvae/          VQModel             config.json + diffusion_pytorch_model.safetensors
  transformer/    Transformer2DModel  config.json + diffusion_pytorch_model.safetensors
  text_encoder/   CLIPTextModel       config.json + model.safetensors
  tokenizer/      CLIPTokenizer       vocab.json + merges.txt (or tokenizer.json)
  scheduler/      VQDiffusionScheduler  scheduler_config.json
  learned_classifier_free_sampling_embeddings/  config.json (+ weights when learnable)

Folders exported by ``python -m vqd_jax.convert export`` from a from-scratch vqd_jax run carry the
run's own word tokenizer and small text encoder instead of CLIP, as ``vqd_jax_tokenizer/`` and
``vqd_jax_text_encoder/`` (diffusers cannot load those two; vqd_jax can). Nothing here touches the
network; ``.bin`` weights are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax import diffusion
from vqd_jax.diffusion import schedules
from vqd_jax.interop import state_dict as sd
from vqd_jax.interop.clip import load_clip_text_encoder
from vqd_jax.interop.null_embedding import NULL_EMBEDDING_COMPONENT, load_learned_null_embedding
from vqd_jax.interop.transformer import load_diffusers_transformer
from vqd_jax.interop.vqvae import load_diffusers_vqvae
from vqd_jax.text.encoder import TextEncoder
from vqd_jax.transformer.fields import architecture_defaults, architecture_fields

MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = "scheduler_config.json"
CLIP_TEXT_COMPONENTS = ("text_encoder", "tokenizer")
VQD_TEXT_COMPONENTS = ("vqd_jax_text_encoder", "vqd_jax_tokenizer")
WORD_TOKENIZER_FILE = "tokenizer.json"
VQD_TEXT_WEIGHTS = "model.safetensors"
# The exported TextEncoder's config: its architecture fields, read off the dataclass.
TEXT_ENCODER_FIELDS = architecture_fields(TextEncoder)

# diffusers VQDiffusionScheduler endpoints of Ā and C̄ for each vqd_jax schedule name.
_RELEASED_ENDPOINTS = dict(alpha_cum_start=0.99999, alpha_cum_end=0.000009,
                           gamma_cum_start=0.000009, gamma_cum_end=0.99999)


@dataclasses.dataclass
class PipelineComponents:
  """Everything a VQ-Diffusion pipeline folder holds, converted to vqd_jax modules and params.

  Attributes:
    transformer_fields: ``Text2ImageTransformer`` keyword arguments.
    transformer_params: its params.
    vq_model, vq_params: the ``VQAutoencoder`` and its params.
    text_kind: "clip" (frozen CLIP, L2-normalised states, no padding mask) or "vqd_jax" (the word
      tokenizer + ``TextEncoder`` of a from-scratch run, trained with a padding mask).
    text_encoder, text_params, tokenizer: the text side.
    null_embedding: learned null states ``[L, D]`` float32, or None (CLIP("") is used instead).
    process: the forward process described by the scheduler config.
  """
  transformer_fields: dict[str, Any]
  transformer_params: Any
  vq_model: Any
  vq_params: Any
  text_kind: str
  text_encoder: Any
  text_params: Any
  tokenizer: Any
  null_embedding: np.ndarray | None
  process: diffusion.MaskAndReplace


def read_model_index(root: str | os.PathLike) -> dict[str, Any]:
  """The parsed ``model_index.json`` of pipeline folder ``root``."""
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"Pipeline folder {root!r} does not exist (vqd_jax reads local folders "
                            "only; download the checkpoint first, e.g. with huggingface-cli).")
  path = os.path.join(root, MODEL_INDEX)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path!r} is missing: {root!r} is not a diffusers pipeline folder "
                            "(expected model_index.json plus vqvae/, transformer/, text_encoder/, "
                            "tokenizer/, scheduler/ sub-folders).")
  try:
    with open(path, encoding="utf-8") as f:
      index = json.load(f)
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise ValueError(f"{path!r} is not valid JSON ({e}).") from None
  if not isinstance(index, dict):
    raise ValueError(f"{path!r} holds a {type(index).__name__}, not the JSON object of a diffusers "
                     "pipeline ({\"_class_name\": ..., \"transformer\": [library, class], ...}).")
  return index


def listed(index: dict[str, Any], name: str) -> bool:
  """Whether ``model_index.json`` lists component ``name`` with a class (not ``[null, null]``)."""
  entry = index.get(name)
  return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None


def component_dir(root: str | os.PathLike, index: dict[str, Any], name: str,
                  required_file: str = "config.json") -> str:
  """The folder of component ``name``; a clear FileNotFoundError when it or its config is missing."""
  root = os.fspath(root)
  if not listed(index, name):
    raise FileNotFoundError(f"Component {name!r} is missing from {os.path.join(root, MODEL_INDEX)!r}"
                            f" (listed: {sorted(k for k in index if not k.startswith('_'))}).")
  directory = os.path.join(root, name)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"Component {name!r} is listed in model_index.json but its folder "
                            f"{directory!r} is missing.")
  if not os.path.exists(os.path.join(directory, required_file)):
    raise FileNotFoundError(f"Component {name!r}: {os.path.join(directory, required_file)!r} is "
                            "missing.")
  return directory


def schedule_from_scheduler_config(config: dict[str, Any]) -> tuple[str, int]:
  """``(schedule name, T)`` of a ``VQDiffusionScheduler`` config.

  Raises:
    ValueError: when its Ā/C̄ endpoints are neither the released ones nor the paper schedule's.
  """
  t_count = int(config.get("num_train_timesteps", 100))
  ends = {k: float(config.get(k, v)) for k, v in _RELEASED_ENDPOINTS.items()}
  for name in schedules.SCHEDULES:
    if all(np.isclose(ends[k], v, rtol=1e-9, atol=0) for k, v in
           scheduler_endpoints(name, t_count).items()):
      return name, t_count
  raise ValueError(f"Scheduler endpoints {ends} match no vqd_jax schedule: 'released' uses "
                   f"{_RELEASED_ENDPOINTS}; 'paper' uses scheduler_endpoints('paper', T).")


def scheduler_endpoints(schedule: str, num_timesteps: int) -> dict[str, float]:
  """The ``VQDiffusionScheduler`` Ā/C̄ endpoints (at t = 0 and t = T-1) of a vqd_jax schedule."""
  cum = schedules.cumulative_schedule(schedule, 2, num_timesteps)
  if schedule == "released":
    return dict(_RELEASED_ENDPOINTS)
  return dict(alpha_cum_start=float(cum.keep[1]), alpha_cum_end=float(cum.keep[-1]),
              gamma_cum_start=float(cum.mask[1]), gamma_cum_end=float(cum.mask[-1]))


def scheduler_config(process: diffusion.MaskAndReplace) -> dict[str, Any]:
  """The ``scheduler/scheduler_config.json`` contents describing ``process`` (for export)."""
  return dict(_class_name="VQDiffusionScheduler", num_vec_classes=process.num_classes + 1,
              num_train_timesteps=process.num_timesteps,
              **scheduler_endpoints(process.schedule, process.num_timesteps))


def load_vqd_text_encoder(directory: str, dtype: Any = jnp.float32):
  """``(TextEncoder, params)`` from an exported ``vqd_jax_text_encoder/`` folder."""
  with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  defaults = architecture_defaults(TextEncoder)
  missing = [k for k in TEXT_ENCODER_FIELDS if k not in config and k not in defaults]
  if missing:
    raise ValueError(f"{directory}/config.json lacks the TextEncoder fields {missing}.")
  if config.get("causal"):
    raise ValueError(f"{directory}/config.json describes a causal text encoder; vqd_jax's "
                     "TextEncoder attends in both directions.")
  module = TextEncoder(**{k: config.get(k, defaults.get(k)) for k in TEXT_ENCODER_FIELDS},
                       dtype=dtype)
  ids = jax.ShapeDtypeStruct((1, module.max_length), jnp.int32)
  shapes = jax.eval_shape(lambda i: nn.meta.unbox(module.init(jax.random.key(0), i)["params"]), ids)
  template = jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), shapes)
  state = sd.load_state_dict(os.path.join(directory, VQD_TEXT_WEIGHTS))
  params = sd.state_dict_to_params(state, template, what=f"vqd_jax text encoder in {directory!r}")
  return module, jax.tree.map(jnp.asarray, params)


def _load_text_side(root: str, index: dict[str, Any], dtype: Any):
  """``(kind, module, params, tokenizer)`` for CLIP or an exported vqd_jax text encoder."""
  if listed(index, VQD_TEXT_COMPONENTS[0]):
    from vqd_jax.text import WordTokenizer  # pylint: disable=import-outside-toplevel
    module, params = load_vqd_text_encoder(component_dir(root, index, VQD_TEXT_COMPONENTS[0]), dtype)
    tok_dir = component_dir(root, index, VQD_TEXT_COMPONENTS[1], WORD_TOKENIZER_FILE)
    return "vqd_jax", module, params, WordTokenizer.load(os.path.join(tok_dir, WORD_TOKENIZER_FILE))
  from vqd_jax.text.clip_tokenizer import CLIPTokenizerWrapper  # pylint: disable=import-outside-toplevel
  module, params = load_clip_text_encoder(component_dir(root, index, "text_encoder"), dtype=dtype)
  tok_dir = os.path.join(root, "tokenizer")
  if not listed(index, "tokenizer") or not os.path.isdir(tok_dir):
    raise FileNotFoundError(f"Component 'tokenizer' is missing from {root!r} (model_index.json "
                            "and a tokenizer/ folder with vocab.json + merges.txt are needed).")
  tokenizer = CLIPTokenizerWrapper.from_pretrained(
      tok_dir, max_length=module.config.max_position_embeddings)
  return "clip", module, params, tokenizer


def load_pipeline_components(root: str | os.PathLike, dtype: Any = jnp.float32
                             ) -> PipelineComponents:
  """Loads and cross-checks every component of pipeline folder ``root``.

  Raises:
    FileNotFoundError: naming the missing folder, component or file.
    ValueError: when components disagree (codebook size, token grid, text width, timesteps).
  """
  root = os.fspath(root)
  index = read_model_index(root)
  fields, transformer_params = load_diffusers_transformer(component_dir(root, index, "transformer"))
  fields = dict(fields, dtype=dtype)
  vq_model, vq_params = load_diffusers_vqvae(component_dir(root, index, "vqvae"), dtype=dtype)
  scheduler_dir = component_dir(root, index, "scheduler", SCHEDULER_CONFIG)
  with open(os.path.join(scheduler_dir, SCHEDULER_CONFIG), encoding="utf-8") as f:
    sched = json.load(f)
  kind, text_encoder, text_params, tokenizer = _load_text_side(root, index, dtype)
  null = None
  if listed(index, NULL_EMBEDDING_COMPONENT):
    null = load_learned_null_embedding(component_dir(root, index, NULL_EMBEDDING_COMPONENT))

  k = fields["num_classes"]
  problems = []
  if vq_model.num_vq_embeddings != k:
    problems.append(f"the VQ has {vq_model.num_vq_embeddings} codes but the transformer predicts {k}")
  if int(sched.get("num_vec_classes", k + 1)) != k + 1:
    problems.append(f"scheduler num_vec_classes={sched.get('num_vec_classes')} != K + 1 = {k + 1}")
  schedule, t_count = schedule_from_scheduler_config(sched)
  if fields["num_embeds_ada_norm"] < t_count:
    problems.append(f"the transformer has {fields['num_embeds_ada_norm']} timestep embeddings but "
                    f"the scheduler uses T = {t_count}")
  width = (text_encoder.config.hidden_size if kind == "clip" else text_encoder.width)
  if width != fields["cross_attention_dim"]:
    problems.append(f"text states are {width} wide but cross_attention_dim is "
                    f"{fields['cross_attention_dim']}")
  if null is not None and null.shape[-1] != width:
    problems.append(f"the null embedding is {null.shape[-1]} wide, the text states {width}")
  if problems:
    raise ValueError(f"Inconsistent pipeline folder {root!r}: " + "; ".join(problems) + ".")
  process = diffusion.MaskAndReplace(num_classes=k, num_timesteps=t_count, schedule=schedule)
  return PipelineComponents(fields, transformer_params, vq_model, vq_params, kind, text_encoder,
                            text_params, tokenizer, null, process)
