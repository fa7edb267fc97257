"""A run's networks from its config: the one place training and inference both build them from.

A diffusion run folder carries everything its conditioner needs besides the weights: the word
tokenizer (``tokenizer.json``) or, for a CLIP text source, a copy of the CLIP config and tokenizer
files (``clip_text/``); the weights themselves live in the run's checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax.numpy as jnp
import ml_collections

from vqd_jax import autoregressive, diffusion, text, transformer, vqvae
from vqd_jax.transformer import fields as fields_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
WORD_TOKENIZER_FILE = "tokenizer.json"
CLIP_TEXT_DIR = "clip_text"
# The layout of the run's precomputed embedding sources (vqd_jax.text.embeddings).
EMBEDDINGS_FILE = "embeddings.json"
# Files of a CLIP checkpoint folder that describe it (the weights are copied into checkpoints).
_CLIP_DESCRIPTION = ("config.json", "vocab.json", "merges.txt", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json",
                     text.clip_tokenizer.WORD_TOKENIZER_FILE)
# VQAutoencoder fields the run sets from elsewhere than config.model.
_AUTOENCODER_DERIVED = {"codebook_ema": "config.loss.codebook_ema",
                        "ema_decay": "config.loss.codebook_ema_decay",
                        "usage_decay": "config.loss.usage_decay",
                        "param_dtype": "the trainer (parameters stay float32)"}
# Denoiser fields the run derives from the autoencoder, the process and the conditioner.
_DENOISER_DERIVED = {"num_classes": "the autoencoder's codebook size",
                     "height": "the image size over the autoencoder's downsampling",
                     "width": "the image size over the autoencoder's downsampling",
                     "num_embeds_ada_norm": "config.diffusion.num_timesteps",
                     "cross_attention_dim": "the text encoder's width",
                     "global_cond_dim": "the embedding sources' pooled widths",
                     "param_dtype": "the trainer (parameters stay float32)"}


def compute_dtype(name: str) -> Any:
  """``config.model.dtype`` -> a jnp dtype (parameters and optimizer state stay float32)."""
  if name not in DTYPES:
    raise ValueError(f"config.model.dtype must be one of {list(DTYPES)}, got {name!r}.")
  return DTYPES[name]


def autoencoder(config: ml_collections.ConfigDict) -> vqvae.VQAutoencoder:
  """The autoencoder of a ``stage=vqvae`` config (``model`` + codebook options from ``loss``)."""
  m, loss = config.model, config.loss
  fields_lib.check_config_fields(m.keys(), vqvae.VQAutoencoder, derived=_AUTOENCODER_DERIVED)
  kwargs = {k: (tuple(v) if isinstance(v, (list, tuple)) else v)
            for k, v in m.items() if k != "dtype"}
  return vqvae.VQAutoencoder(**kwargs, codebook_ema=bool(loss.codebook_ema),
                             ema_decay=float(loss.codebook_ema_decay),
                             usage_decay=float(loss.usage_decay), dtype=compute_dtype(m.dtype))


def is_coarse_stage(config: ml_collections.ConfigDict) -> bool:
  """Whether a token model's run is CTF's first stage (it predicts coarse labels, not codes)."""
  c = config.get("ctf")
  return c is not None and bool(c.num_clusters) and config.stage != "ctf_fine"


def num_classes(config: ml_collections.ConfigDict, num_codes: int) -> int:
  """Classes a token model's run predicts: CTF's coarse labels for a first stage
  (``config.ctf.num_clusters``), else the autoencoder's ``num_codes``."""
  return int(config.ctf.num_clusters) if is_coarse_stage(config) else num_codes


def process(config: ml_collections.ConfigDict, num_codes: int) -> diffusion.MaskAndReplace:
  """The mask-and-replace process of a diffusion config over ``num_codes`` codes."""
  d = config.diffusion
  return diffusion.MaskAndReplace(num_classes=num_codes, num_timesteps=d.num_timesteps,
                                  schedule=d.schedule)


def expert_intervals(config: ml_collections.ConfigDict) -> diffusion.ExpertIntervals | None:
  """The intervals of a run's expert denoisers (``config.experts``), or None for one denoiser."""
  e, t_count = config.get("experts"), config.diffusion.num_timesteps
  if e is None or not e.num:
    return None
  num, bounds = int(e.num), tuple(int(b) for b in e.boundaries)
  if num < 2:
    raise ValueError(f"config.experts.num must be 0 (one denoiser) or >= 2, got {num}.")
  if bounds:
    if len(bounds) != num - 1:
      raise ValueError(f"config.experts.boundaries has {len(bounds)} entries; {num} experts need "
                       f"{num - 1} (the first timestep of experts 1..{num - 1}).")
    return diffusion.ExpertIntervals(bounds, t_count)
  if num != 3:
    raise ValueError(f"config.experts.num={num} without boundaries: the tree split makes 3 "
                     "experts; set --config.experts.boundaries=[...] for another number.")
  return diffusion.ExpertIntervals.tree([1.0] * t_count, e.high_depth, e.low_depth)


def denoiser(config: ml_collections.ConfigDict, num_codes: int, grid: tuple[int, int],
             text_width: int, pooled_width: int = 0) -> transformer.Text2ImageTransformer:
  """The denoiser of a diffusion config for a ``grid`` of tokens, ``text_width`` states and a
  ``pooled_width`` global vector (the conditioner's; 0: none)."""
  fields_lib.check_config_fields(config.model.keys(), transformer.Text2ImageTransformer,
                                 derived=_DENOISER_DERIVED)
  model_fields = {k: v for k, v in config.model.items() if k != "dtype"}
  return transformer.Text2ImageTransformer(
      num_classes=num_codes, height=grid[0], width=grid[1],
      num_embeds_ada_norm=config.diffusion.num_timesteps, cross_attention_dim=text_width,
      global_cond_dim=pooled_width, dtype=compute_dtype(config.model.dtype), **model_fields)


# ARTransformer fields the run derives, or that belong to one use of the class.
_AR_DERIVED = {"num_classes": "the autoencoder's codebook size (or config.ctf.num_clusters)",
               "height": "the image size over the autoencoder's downsampling",
               "width": "the image size over the autoencoder's downsampling",
               "cross_attention_dim": "the text encoder's width",
               "causal": "the stage", "input_classes": "the stage", "decode": "the sampler",
               "param_dtype": "the trainer (parameters stay float32)"}


def ar_model(config: ml_collections.ConfigDict, num_classes: int, grid: tuple[int, int],
             text_width: int, *, input_classes: int = 0) -> autoregressive.ARTransformer:
  """The token model of an ``ar`` config (``input_classes > 0``: the non-causal map from that
  many input labels, CTF's fine predictor)."""
  fields_lib.check_config_fields(config.model.keys(), autoregressive.ARTransformer,
                                 derived=_AR_DERIVED)
  model_fields = {k: v for k, v in config.model.items() if k != "dtype"}
  return autoregressive.ARTransformer(
      num_classes=num_classes, height=grid[0], width=grid[1], cross_attention_dim=text_width,
      causal=not input_classes, input_classes=input_classes,
      dtype=compute_dtype(config.model.dtype), **model_fields)


def configured_embeddings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``{name: its config section}`` of the embedding sources the config enables (a path set)."""
  sources = config.get("embeddings")
  if sources is None:
    return {}
  unknown = sorted(set(sources.keys()) - set(text.embeddings.KINDS))
  if unknown:
    raise ValueError(f"config.embeddings has unknown sources {unknown}; the sources are "
                     f"{sorted(text.embeddings.KINDS)}.")
  return {name: section for name, section in sources.items() if section.get("path")}


def embedding_sources(workdir: str) -> tuple[text.EmbeddingSource, ...]:
  """The run's embedding sources, from ``workdir/embeddings.json`` (none without the file)."""
  path = os.path.join(workdir, EMBEDDINGS_FILE)
  if not os.path.exists(path):
    return ()
  with open(path, encoding="utf-8") as f:
    layout = json.load(f)
  fields = ("name", "width", "length", "pooled_width", "drop_rate")
  return tuple(text.EmbeddingSource(**{k: s[k] for k in fields if k in s})
               for s in layout["sources"])


def embedding_paths(workdir: str) -> dict[str, str]:
  """``{name: encoder folder}`` of the run's sources, for embedding prompts at sampling."""
  path = os.path.join(workdir, EMBEDDINGS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return {s["name"]: s.get("path", "") for s in json.load(f)["sources"]}


def conditioner(config: ml_collections.ConfigDict, workdir: str) -> text.Conditioner:
  """The run's conditioner, from the text assets in ``workdir`` (see ``save_text_assets``)."""
  conditioner = _text_conditioner(config, workdir)
  sources = embedding_sources(workdir)
  return dataclasses.replace(conditioner, embeddings=sources) if sources else conditioner


def _text_conditioner(config: ml_collections.ConfigDict, workdir: str) -> text.Conditioner:
  tcfg, dtype = config.text, compute_dtype(config.model.dtype)
  if tcfg.encoder == "word":
    path = os.path.join(workdir, WORD_TOKENIZER_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} is missing: a diffusion run keeps its word tokenizer there.")
    tokenizer = text.WordTokenizer.load(path)
    encoder = text.TextEncoder(vocab_size=tokenizer.vocab_size, max_length=tcfg.max_length,
                               width=tcfg.width, num_layers=tcfg.num_layers,
                               num_heads=tcfg.num_heads, dtype=dtype)
    return text.Conditioner(tokenizer, encoder, source="word", trainable=True, use_mask=True)
  if tcfg.encoder == "clip":
    folder = os.path.join(workdir, CLIP_TEXT_DIR)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
      clip_config = text.clip_config_from_hf(json.load(f))
    if tcfg.max_length > clip_config.max_position_embeddings:
      raise ValueError(f"config.text.max_length={tcfg.max_length} exceeds the CLIP encoder's "
                       f"{clip_config.max_position_embeddings} positions.")
    tokenizer = text.load_clip_tokenizer(folder, max_length=tcfg.max_length)
    encoder = text.CLIPTextEncoder(clip_config, dtype=dtype)
    return text.Conditioner(tokenizer, encoder, source="clip", trainable=False, use_mask=False)
  raise ValueError(f"config.text.encoder must be one of {text.SOURCES}, got {tcfg.encoder!r}.")


def save_clip_description(clip_path: str, workdir: str) -> None:
  """Copies a CLIP checkpoint's config and tokenizer files (not its weights) into ``workdir``."""
  from vqd_jax.interop.clip import resolve_component_dir  # pylint: disable=import-outside-toplevel
  source = resolve_component_dir(clip_path, "text_encoder")
  tokenizer_dir = source
  if not os.path.exists(os.path.join(source, "vocab.json")):  # a pipeline root's tokenizer/
    tokenizer_dir = os.path.join(os.path.dirname(source.rstrip("/")), "tokenizer")
  target = os.path.join(workdir, CLIP_TEXT_DIR)
  os.makedirs(target, exist_ok=True)
  copied = []
  for folder in dict.fromkeys((source, tokenizer_dir)):
    for name in _CLIP_DESCRIPTION:
      if os.path.exists(os.path.join(folder, name)) and name not in copied:
        shutil.copyfile(os.path.join(folder, name), os.path.join(target, name + ".tmp"))
        os.replace(os.path.join(target, name + ".tmp"), os.path.join(target, name))
        copied.append(name)
  tokenizers = {"vocab.json", "tokenizer.json", text.clip_tokenizer.WORD_TOKENIZER_FILE}
  if "config.json" not in copied or not tokenizers & set(copied):
    raise FileNotFoundError(f"config.text.clip_path={clip_path!r} needs config.json and the CLIP "
                            "tokenizer files (vocab.json + merges.txt, or the word_tokenizer.json "
                            "of a tower trained by configs/clip.py) in the same folder or in a "
                            "pipeline root's text_encoder/ and tokenizer/ folders.")
