"""Writes vqd_jax models as a diffusers VQ-Diffusion pipeline folder (the inverse of loading).

Each component is ``config.json`` + ``diffusion_pytorch_model.safetensors`` (``model.safetensors``
for the CLIP text encoder, as transformers saves it), and ``model_index.json`` names them, so
``Transformer2DModel.from_pretrained(out, subfolder="transformer")``,
``VQModel.from_pretrained(out, subfolder="vqvae")`` and ``VQDiffusionScheduler.from_pretrained(out,
subfolder="scheduler")`` load them in diffusers.

Text side:

* CLIP (a pretrained checkpoint, possibly fine-tuned): ``text_encoder/`` and ``tokenizer/`` in the
  hub layout; the whole folder then loads as a diffusers ``VQDiffusionPipeline``.
* a from-scratch vqd_jax run's word tokenizer and small ``TextEncoder``: diffusers has no class for
  them, so they are written as vqd_jax-specific components ``vqd_jax_text_encoder/`` and
  ``vqd_jax_tokenizer/`` (``text_encoder``/``tokenizer`` are listed as ``[null, null]``). diffusers
  users get the transformer, VQ, scheduler and null embedding; vqd_jax loads everything. That
  transformer was trained with a text padding mask: pass it as ``encoder_attention_mask``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import numpy as np

from vqd_jax import diffusion
from vqd_jax.interop import diffusers_pipeline as layout
from vqd_jax.interop import state_dict as sd
from vqd_jax.interop.null_embedding import NULL_EMBEDDING_COMPONENT
from vqd_jax.interop.transformer import params_to_diffusers as transformer_state_dict
from vqd_jax.interop.transformer import transformer_config_to_diffusers
from vqd_jax.interop.vqvae import params_to_diffusers as vq_state_dict

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"
VQD_TEXT_NOTE = ("vqd_jax_text_encoder/ and vqd_jax_tokenizer/ hold this run's word tokenizer and "
                 "text encoder: vqd_jax-specific files that diffusers cannot load (diffusers users "
                 "load transformer/, vqvae/, scheduler/ and the null embedding individually; the "
                 "transformer was trained with a text padding mask, pass encoder_attention_mask).")


def _diffusers_version() -> str:
  try:
    from importlib.metadata import version  # pylint: disable=import-outside-toplevel
    return version("diffusers")
  except Exception:  # pylint: disable=broad-except
    return "0.30.0"


def write_component(directory: str, config: dict[str, Any], state: dict[str, np.ndarray],
                    weights_file: str = DIFFUSERS_WEIGHTS, config_file: str = "config.json") -> None:
  """Writes ``config`` as JSON and ``state`` as float32 safetensors into ``directory``."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, config_file), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  if state:
    arrays = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in state.items()}
    # transformers refuses safetensors files without format metadata.
    save_file(arrays, os.path.join(directory, weights_file), metadata={"format": "pt"})


def vq_config_to_diffusers(model, image_size: int) -> dict[str, Any]:
  """The diffusers ``VQModel`` config of a ``VQAutoencoder`` for ``image_size`` images."""
  if model.patch_size != 1 or model.local_encoder:
    raise ValueError(
        f"This autoencoder uses vqd_jax extensions diffusers' VQModel cannot express "
        f"(patch_size={model.patch_size}, local_encoder={model.local_encoder}); it can be sampled "
        "with vqd_jax but not exported to the diffusers layout. Train the autoencoder with "
        "--config.model.patch_size=1 --config.model.local_encoder=False (e.g. the ithq or f8 "
        "presets) to export.")
  n = len(model.block_out_channels)
  down = tuple(model.down_attention) if model.down_attention is not None else (False,) * n
  up = tuple(model.up_attention) if model.up_attention is not None else tuple(reversed(down))
  return dict(
      _class_name="VQModel", _diffusers_version=_diffusers_version(),
      in_channels=model.in_channels, out_channels=model.out_channels,
      down_block_types=["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in down],
      up_block_types=["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in up],
      block_out_channels=list(model.block_out_channels), layers_per_block=model.layers_per_block,
      act_fn="silu", latent_channels=model.latent_channels, sample_size=int(image_size),
      num_vq_embeddings=model.num_vq_embeddings, norm_num_groups=model.norm_num_groups,
      vq_embed_dim=model.vq_embed_dim, scaling_factor=0.18215, norm_type="group",
      mid_block_add_attention=bool(model.mid_block_attention), lookup_from_codebook=False,
      force_upcast=False)


def clip_config_to_hf(config, tokenizer) -> dict[str, Any]:
  """A transformers ``CLIPTextModel`` config.json dict for our ``CLIPTextConfig``."""
  return dict(architectures=["CLIPTextModel"], model_type="clip_text_model",
              vocab_size=config.vocab_size, hidden_size=config.hidden_size,
              intermediate_size=config.intermediate_size,
              num_hidden_layers=config.num_hidden_layers,
              num_attention_heads=config.num_attention_heads,
              max_position_embeddings=config.max_position_embeddings, hidden_act=config.hidden_act,
              layer_norm_eps=config.layer_norm_eps, bos_token_id=tokenizer.bos_id,
              eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, dtype="float32")


def clip_state_dict(params: Any, prefix: str = "text_model.") -> dict[str, np.ndarray]:
  """A transformers ``CLIPTextModel`` state dict (hub key layout) from our CLIP params.

  Our projections are plain ``[in, out]`` Dense kernels named like HF's, so the generic
  (transposing) conversion is all it takes.
  """
  state = sd.params_to_state_dict(nn.meta.unbox(params))
  return {prefix + k: v for k, v in state.items()}


def export_pipeline(out_dir: str | os.PathLike, *, transformer_fields: dict[str, Any],
                    transformer_params: Any, vq_model: Any, vq_params: Any,
                    process: diffusion.MaskAndReplace, text_kind: str, text_encoder: Any,
                    text_params: Any, tokenizer: Any, null_embedding: Any = None) -> list[str]:
  """Writes a VQ-Diffusion pipeline folder; returns notes for the user (what diffusers can load).

  Args:
    out_dir: output folder (created; existing component files are overwritten).
    transformer_fields, transformer_params: the ``Text2ImageTransformer`` and its params.
    vq_model, vq_params: the ``VQAutoencoder`` and its params.
    process: the forward process (its K, T and schedule become ``scheduler/``).
    text_kind: "clip" (``CLIPTextEncoder`` + ``CLIPTokenizerWrapper``) or "vqd_jax" (``TextEncoder``
      + ``WordTokenizer``).
    text_encoder, text_params, tokenizer: the text side.
    null_embedding: learned null states ``[L, D]``, or None (CLIP("") at sampling time).
  """
  if isinstance(transformer_params, diffusion.ExpertParams):
    raise ValueError(
        f"This run is an ensemble of {transformer_params.intervals.num_experts} expert denoisers "
        "(config.experts); diffusers' VQ-Diffusion pipeline has one transformer, so it cannot be "
        "exported. Sample it with vqd_jax (VQDiffusionPipeline.from_run or python -m "
        "vqd_jax.sample --workdir), or export the single-denoiser run it was split from (its "
        "config.init_from).")
  out = os.fspath(out_dir)
  version = _diffusers_version()
  k = transformer_fields["num_classes"]
  if vq_model.num_vq_embeddings != k or process.num_classes != k:
    raise ValueError(f"Codebook sizes disagree: VQ {vq_model.num_vq_embeddings}, transformer {k}, "
                     f"process {process.num_classes}.")
  transformer_config = dict(transformer_config_to_diffusers(transformer_fields),
                            _diffusers_version=version)
  write_component(os.path.join(out, "transformer"), transformer_config,
                  transformer_state_dict(transformer_params))
  image_size = transformer_fields["height"] * vq_model.downsample_factor
  write_component(os.path.join(out, "vqvae"), vq_config_to_diffusers(vq_model, image_size),
                  vq_state_dict(nn.meta.unbox(vq_params)))
  write_component(os.path.join(out, "scheduler"),
                  dict(layout.scheduler_config(process), _diffusers_version=version), {},
                  config_file=layout.SCHEDULER_CONFIG)
  index: dict[str, Any] = {"_class_name": "VQDiffusionPipeline", "_diffusers_version": version,
                           "transformer": ["diffusers", "Transformer2DModel"],
                           "vqvae": ["diffusers", "VQModel"],
                           "scheduler": ["diffusers", "VQDiffusionScheduler"]}
  notes = []
  if null_embedding is not None:
    null = np.asarray(nn.meta.unbox(null_embedding), np.float32)
    write_component(os.path.join(out, NULL_EMBEDDING_COMPONENT),
                    dict(_class_name="LearnedClassifierFreeSamplingEmbeddings",
                         _diffusers_version=version, learnable=True, hidden_size=null.shape[1],
                         length=null.shape[0]), {"embeddings": null})
    index[NULL_EMBEDDING_COMPONENT] = ["vq_diffusion", "LearnedClassifierFreeSamplingEmbeddings"]
  if text_kind == "clip":
    write_component(os.path.join(out, "text_encoder"),
                    clip_config_to_hf(text_encoder.config, tokenizer),
                    clip_state_dict(text_params), TRANSFORMERS_WEIGHTS)
    tokenizer.tokenizer.save_pretrained(os.path.join(out, "tokenizer"))
    index.update(text_encoder=["transformers", "CLIPTextModel"],
                 tokenizer=["transformers", "CLIPTokenizer"])
    if null_embedding is None:
      index[NULL_EMBEDDING_COMPONENT] = ["vq_diffusion", "LearnedClassifierFreeSamplingEmbeddings"]
      write_component(os.path.join(out, NULL_EMBEDDING_COMPONENT),
                      dict(_class_name="LearnedClassifierFreeSamplingEmbeddings",
                           _diffusers_version=version, learnable=False), {})
  elif text_kind == "vqd_jax":
    config = {name: getattr(text_encoder, name) for name in layout.TEXT_ENCODER_FIELDS}
    write_component(os.path.join(out, layout.VQD_TEXT_COMPONENTS[0]),
                    dict(_class_name="vqd_jax.text.TextEncoder", **config),
                    sd.params_to_state_dict(nn.meta.unbox(text_params)), layout.VQD_TEXT_WEIGHTS)
    tokenizer_dir = os.path.join(out, layout.VQD_TEXT_COMPONENTS[1])
    os.makedirs(tokenizer_dir, exist_ok=True)
    tokenizer.save(os.path.join(tokenizer_dir, layout.WORD_TOKENIZER_FILE))
    index.update(text_encoder=[None, None], tokenizer=[None, None],
                 vqd_jax_text_encoder=["vqd_jax", "TextEncoder"],
                 vqd_jax_tokenizer=["vqd_jax", "WordTokenizer"])
    notes.append(VQD_TEXT_NOTE)
  else:
    raise ValueError(f"text_kind must be 'clip' or 'vqd_jax', got {text_kind!r}.")
  if process.schedule != "released":
    notes.append(f"The run uses the {process.schedule!r} schedule; scheduler_config.json encodes "
                 "it with its Ā/C̄ end points, whose final Ā = 0 gives log 0 in diffusers' "
                 "VQDiffusionScheduler (vqd_jax reads it back exactly).")
  with open(os.path.join(out, layout.MODEL_INDEX), "w", encoding="utf-8") as f:
    json.dump(index, f, indent=2)
  return notes


def export_components(out_dir: str | os.PathLike, components: layout.PipelineComponents,
                      params: dict[str, Any]) -> list[str]:
  """``export_pipeline`` for the modules of ``components`` with the weights in ``params``
  (``{"transformer", "vqvae", "text_encoder", "null_embedding"?}``)."""
  fields = {k: v for k, v in components.transformer_fields.items() if k != "dtype"}
  return export_pipeline(
      out_dir, transformer_fields=fields, transformer_params=params["transformer"],
      vq_model=components.vq_model, vq_params=params["vqvae"], process=components.process,
      text_kind=components.text_kind, text_encoder=components.text_encoder,
      text_params=params["text_encoder"], tokenizer=components.tokenizer,
      null_embedding=params.get("null_embedding"))
