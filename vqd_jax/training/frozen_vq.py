"""A trained VQ autoencoder, frozen, for the diffusion stage and for sampling.

Loaded from the workdir of a ``stage=vqvae`` run: its config comes from the checkpoint, its weights
from the latest step (the EMA weights when the run kept them).
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqd_jax.sharding import on_first_local_device
from vqd_jax.training import checkpoint as ckpt_lib


class FrozenVQ:
  """``encode``: uint8 images ``[B, H, W, 3]`` -> codes ``[B, h, w]``; ``decode``: the inverse."""

  def __init__(self, task, params, extra):
    self.task = task
    self.params = params
    self.extra = extra

  @classmethod
  def from_workdir(cls, workdir: str) -> "FrozenVQ":
    if not workdir:
      raise ValueError("config.vqvae_workdir is empty: point it at the workdir of a trained "
                       "autoencoder (python -m vqd_jax.train --config configs/vqvae.py ...).")
    ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(
          f"No autoencoder checkpoint in {os.path.abspath(workdir)}/checkpoints: train the "
          "autoencoder first (python -m vqd_jax.train --config configs/vqvae.py:shapes --workdir "
          f"{workdir}).")
    config = ml_collections.ConfigDict(ckpt.restore_config(step))
    from vqd_jax.training.vqvae_task import VQVAETask  # pylint: disable=import-outside-toplevel
    task = VQVAETask(config, workdir)
    example = {"image": jnp.zeros((1, config.data.image_size, config.data.image_size, 3), jnp.uint8)}
    boxed = jax.eval_shape(task.init_state, jax.random.key(0), example)
    # Each process restores its own copy on a local device (e.g. each host of a pod).
    state, _ = ckpt.restore(step, on_first_local_device(boxed))
    ckpt.close()
    params = state.ema_params if state.ema_params is not None else state.params
    return cls(task, params, state.extra)

  @property
  def num_codes(self) -> int:
    return int(self.task.num_codes)

  def token_grid(self, image_size: int) -> tuple[int, int]:
    f = self.task.downsample_factor
    return image_size // f, image_size // f

  @functools.partial(jax.jit, static_argnums=0)
  def _encode(self, params, extra, images):
    return self.task.encode_tokens(params, extra, images)

  @functools.partial(jax.jit, static_argnums=0)
  def _decode(self, params, extra, tokens):
    return self.task.decode_tokens(params, extra, tokens)

  def encode(self, images: jax.Array) -> jax.Array:
    return self._encode(self.params, self.extra, images)

  def decode(self, tokens: jax.Array) -> jax.Array:
    """``tokens`` ``[B, N]`` (raster order) or ``[B, h, w]`` -> uint8 ``[B, H, W, 3]``."""
    tokens = jnp.asarray(tokens)
    if tokens.ndim == 2:
      side = int(round(np.sqrt(tokens.shape[1])))
      tokens = tokens.reshape(tokens.shape[0], side, side)
    return self._decode(self.params, self.extra, tokens)


def save_untrained(workdir: str, config: ml_collections.ConfigDict, seed: int = 0) -> None:
  """Writes a freshly initialised autoencoder run (step 0) to ``workdir``.

  Benchmarks and tests use it where only shapes and cost matter, through the same loading path as a
  trained run.
  """
  from vqd_jax.training.vqvae_task import VQVAETask  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  task = VQVAETask(config, workdir)
  example = {"image": jnp.zeros((1, config.data.image_size, config.data.image_size, 3), jnp.uint8)}
  state = nn.meta.unbox(jax.jit(task.init_state)(jax.random.key(seed), example))
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
  ckpt.save(0, state, {}, json.loads(config.to_json_best_effort()), force=True)
  ckpt.close()
