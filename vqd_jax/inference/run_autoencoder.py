"""A token-model run's own copy of its frozen autoencoder, so that the run travels.

When a denoiser, AR or CTF run starts it writes ``WORKDIR/autoencoder/``: ``config.json`` (the
autoencoder run's config) and ``params.safetensors`` (the weights it encodes and decodes with,
flattened with ``/``). Sampling and resuming read that copy, so a run copied or moved to another
folder or machine needs nothing outside it; ``config.vqvae_workdir`` is read only by runs that
have no copy.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from vqd_jax import build
from vqd_jax.inference.autoencoder import FrozenAutoencoder

AUTOENCODER_DIR = "autoencoder"
_CONFIG = "config.json"
_PARAMS = "params.safetensors"


def autoencoder_dir(workdir: str) -> str:
  return os.path.join(workdir, AUTOENCODER_DIR)


def has_copy(workdir: str) -> bool:
  return os.path.isfile(os.path.join(autoencoder_dir(workdir), _PARAMS))


def save_copy(vq: FrozenAutoencoder, vq_config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes ``vq`` into ``workdir/autoencoder/`` (files renamed into place); returns the folder."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  folder = autoencoder_dir(workdir)
  os.makedirs(folder, exist_ok=True)
  flat = traverse_util.flatten_dict(unfreeze(vq.params), sep="/")
  arrays = {k: np.ascontiguousarray(np.asarray(jax.device_get(v))) for k, v in flat.items()}
  config_path, params_path = os.path.join(folder, _CONFIG), os.path.join(folder, _PARAMS)
  with open(config_path + ".tmp", "w", encoding="utf-8") as f:
    f.write(vq_config.to_json(indent=2))
  os.replace(config_path + ".tmp", config_path)
  save_file(arrays, params_path + ".tmp")
  os.replace(params_path + ".tmp", params_path)  # last: its presence means the copy is whole
  return folder


def load_copy(workdir: str) -> FrozenAutoencoder:
  """The autoencoder copied into ``workdir/autoencoder/``; a copy that does not fit its config
  is an error naming the file."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  folder = autoencoder_dir(workdir)
  config_path = os.path.join(folder, _CONFIG)
  try:
    with open(config_path, encoding="utf-8") as f:
      config = ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise ValueError(f"{config_path} cannot be read ({type(e).__name__}: {e}); copy the run's "
                     "autoencoder/ folder again from where the run was trained.") from None
  model = build.autoencoder(config)
  size = config.data.image_size
  images = jnp.zeros((1, size, size, 3), jnp.float32)
  abstract = jax.eval_shape(lambda k: model.init(k, images, train=True)["params"],
                            jax.random.key(0))
  want = traverse_util.flatten_dict(unfreeze(nn.meta.unbox(abstract)), sep="/")
  path = os.path.join(folder, _PARAMS)
  try:
    got = load_file(path)
  except Exception as e:  # safetensors raises its own error types for damaged files
    raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}); copy the run's "
                     "autoencoder/ folder again from where the run was trained.") from None
  wrong = sorted(k for k in want if k not in got or got[k].shape != want[k].shape)
  if wrong or set(got) - set(want):
    raise ValueError(f"{path} does not hold the autoencoder its config describes (missing or "
                     f"misshapen: {wrong[:3]}; unexpected: {sorted(set(got) - set(want))[:3]}).")
  params: Any = traverse_util.unflatten_dict({k: jnp.asarray(got[k]) for k in want}, sep="/")
  return FrozenAutoencoder(model, params)


def run_autoencoder(config: ml_collections.ConfigDict, workdir: str) -> FrozenAutoencoder:
  """The autoencoder of a token-model run: its own copy, else ``config.vqvae_workdir``'s."""
  from vqd_jax.inference import loading  # pylint: disable=import-outside-toplevel
  if has_copy(workdir):
    return load_copy(workdir)
  source = config.get("vqvae_workdir") or ""
  if source and not os.path.isdir(source):
    raise loading.MissingRunError(
        f"{workdir} has no copy of its autoencoder ({AUTOENCODER_DIR}/) and its config points at "
        f"{source!r}, which does not exist here: pass the autoencoder's run with "
        "--config.vqvae_workdir=DIR (or copy the run together with that folder).")
  return loading.load_autoencoder(source)
