"""diffusers ``VQModel`` checkpoints -> :class:`vqd_jax.vqvae.VQAutoencoder` params.

The Flax modules carry diffusers' names, so conversion is :func:`state_dict_to_params` plus one rename
table for the legacy attention names that hub checkpoints saved with diffusers <= 0.8 still use
(``microsoft/vq-diffusion-ithq``'s ``vqvae``), and a config mapping from ``vqvae/config.json``.

  state = load_state_dict("vq-diffusion-ithq/vqvae")
  model, params = load_diffusers_vqvae("vq-diffusion-ithq/vqvae")
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.interop import state_dict as sd_lib
from vqd_jax.vqvae import VQAutoencoder

# diffusers <= 0.8 named the VAE attention projections query/key/value/proj_attn.
LEGACY_ATTENTION_RULES: sd_lib.RenameRules = (
    (r"(attentions\.\d+)\.query\.", r"\1.to_q."),
    (r"(attentions\.\d+)\.key\.", r"\1.to_k."),
    (r"(attentions\.\d+)\.value\.", r"\1.to_v."),
    (r"(attentions\.\d+)\.proj_attn\.", r"\1.to_out.0."),
)

# Our codebook is the bare parameter quantize/embedding, diffusers' an nn.Embedding named embedding.
CODEBOOK_RULES: sd_lib.RenameRules = ((r"^quantize\.embedding\.weight$", "quantize.embedding"),)
EXPORT_RULES: sd_lib.RenameRules = ((r"^quantize\.weight$", "quantize.embedding.weight"),)

_DOWN_TYPES = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
_UP_TYPES = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}


def config_from_diffusers(config: Mapping[str, Any]) -> dict[str, Any]:
  """``VQModel`` ``config.json`` contents -> :class:`VQAutoencoder` keyword arguments.

  Raises:
    ValueError: for options the port does not implement (spatial norm, other block types,
      activations other than SiLU), naming the offending field.
  """
  def blocks(key, table, default):
    types = config.get(key, default)
    unknown = [t for t in types if t not in table]
    if unknown:
      raise ValueError(f"{key} {unknown} are not supported; expected {sorted(table)}.")
    return tuple(table[t] for t in types)

  n = len(config.get("block_out_channels", (64,)))
  if config.get("norm_type", "group") != "group":
    raise ValueError(f"norm_type={config['norm_type']!r} (MoVQ spatial norm) is not supported; "
                     "only 'group' is.")
  if config.get("act_fn", "silu") != "silu":
    raise ValueError(f"act_fn={config['act_fn']!r} is not supported; only 'silu' is.")
  latent = int(config.get("latent_channels", 3))
  return dict(
      block_out_channels=tuple(int(c) for c in config.get("block_out_channels", (64,))),
      layers_per_block=int(config.get("layers_per_block", 1)),
      down_attention=blocks("down_block_types", _DOWN_TYPES, ("DownEncoderBlock2D",) * n),
      up_attention=blocks("up_block_types", _UP_TYPES, ("UpDecoderBlock2D",) * n),
      mid_block_attention=bool(config.get("mid_block_add_attention", True)),
      latent_channels=latent,
      vq_embed_dim=int(config.get("vq_embed_dim") or latent),
      num_vq_embeddings=int(config.get("num_vq_embeddings", 256)),
      norm_num_groups=int(config.get("norm_num_groups", 32)),
      in_channels=int(config.get("in_channels", 3)),
      out_channels=int(config.get("out_channels", 3)))


def params_from_diffusers(state_dict: Mapping[str, np.ndarray], template: Mapping[str, Any]
                          ) -> dict[str, Any]:
  """Converts a ``VQModel`` state dict (new or legacy attention names) to params like ``template``.

  Args:
    state_dict: torch key -> array, e.g. from :func:`vqd_jax.interop.state_dict.load_state_dict`.
    template: the model's (unboxed) params or their ``jax.eval_shape``.
  """
  return sd_lib.state_dict_to_params(state_dict, template,
                                     rules=LEGACY_ATTENTION_RULES + CODEBOOK_RULES,
                                     what="diffusers VQModel checkpoint")


def params_to_diffusers(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of :func:`params_from_diffusers`: a ``VQModel`` state dict (current names)."""
  return sd_lib.params_to_state_dict(params, rules=EXPORT_RULES)


def load_diffusers_vqvae(directory: str | os.PathLike, dtype=jnp.float32
                         ) -> tuple[VQAutoencoder, dict[str, Any]]:
  """Reads a diffusers ``vqvae`` folder (``config.json`` + weights) -> ``(model, params)``."""
  directory = os.fspath(directory)
  config_path = os.path.join(directory, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} does not exist: pass the VQModel component folder "
                            "(the one holding config.json and the weights).")
  with open(config_path, encoding="utf-8") as f:
    model = VQAutoencoder(**config_from_diffusers(json.load(f)), dtype=dtype)
  size = 8 * model.downsample_factor
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, size, size, model.in_channels))))
  template = nn.meta.unbox(shapes)["params"]
  params = params_from_diffusers(sd_lib.load_state_dict(directory), template)
  return model, jax.tree.map(jnp.asarray, params)
