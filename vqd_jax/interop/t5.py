"""Loads Hugging Face T5 checkpoints (``T5EncoderModel`` or full ``T5ForConditionalGeneration``
folders) into :class:`vqd_jax.text.t5.T5Encoder`.

A folder holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``, read with
``torch.load(weights_only=True)``). A full model's decoder and ``lm_head`` are skipped;
``encoder.embed_tokens.weight`` is a tied copy of ``shared.weight`` and either may be present.
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
from vqd_jax.text.t5 import T5Encoder, t5_config_from_hf

# The decoder side of a full T5, and the encoder's tied view of the shared embedding.
T5_ENCODER_IGNORE = (r"^decoder\.", r"^lm_head\.", r"^encoder\.embed_tokens\.weight$")


def _read_config(directory: str) -> dict[str, Any]:
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"T5 checkpoint folder {directory!r} does not exist.")
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No config.json in {directory!r}: expected a Hugging Face T5EncoderModel or "
        "T5ForConditionalGeneration folder saved with save_pretrained (config.json + "
        "model.safetensors or pytorch_model.bin).")
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e}).") from None


def _param_template(module: T5Encoder) -> dict:
  """The module's params as zero-stride numpy stand-ins (shape and dtype, nothing allocated)."""
  shapes = jax.eval_shape(
      lambda: nn.meta.unbox(module.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]))
  return jax.tree_util.tree_map(
      lambda s: np.broadcast_to(np.zeros((), np.dtype(s.dtype)), s.shape), shapes)


def load_t5_encoder(path: str | os.PathLike, dtype: Any = jnp.float32,
                    param_dtype: Any = jnp.float32) -> tuple[T5Encoder, dict]:
  """Builds the encoder from a local checkpoint folder.

  Args:
    path: a ``T5EncoderModel`` or ``T5ForConditionalGeneration`` folder (T5, FLAN-T5, mT5).
    dtype: compute dtype; param_dtype: dtype the weights are stored in.

  Returns:
    ``(module, params)`` with ``params`` the plain ``params`` collection:
    ``module.apply({"params": params}, ids, mask)`` gives ``[B, L, d_model]``.

  Raises:
    FileNotFoundError: the folder, ``config.json`` or the weights file is missing.
    ValueError: the weights do not match the config (names every offending key).
  """
  directory = os.fspath(path)
  module = T5Encoder(t5_config_from_hf(_read_config(directory)), dtype=dtype,
                     param_dtype=param_dtype)
  weights_path = sd.find_weights_file(directory)
  state = sd.load_state_dict(weights_path)
  if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
    state["shared.weight"] = state["encoder.embed_tokens.weight"]
  params = sd.state_dict_to_params(state, _param_template(module), ignore=T5_ENCODER_IGNORE,
                                   what=f"T5 checkpoint {weights_path!r}")
  return module, jax.tree_util.tree_map(lambda x: jnp.asarray(x, param_dtype), params)
