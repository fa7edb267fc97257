"""Shared setup for the train-step benchmarks: a task, its sharded state and a compiled step."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import ml_collections


def prepare_task(config: ml_collections.ConfigDict, vqvae_config: str | None):
  """The task for ``config``; a diffusion config without a trained autoencoder gets an untrained
  one (same shapes and cost) saved in a temporary run directory."""
  from vqd_jax.training import tasks  # pylint: disable=import-outside-toplevel
  workdir = tempfile.mkdtemp(prefix="vqd_bench_")
  if config.stage == "diffusion" and not config.get("vqvae_workdir"):
    from vqd_jax import configs_io  # pylint: disable=import-outside-toplevel
    from vqd_jax.training import frozen_vq  # pylint: disable=import-outside-toplevel
    vq_cfg = configs_io.load_config(vqvae_config or "configs/vqvae.py:shapes")
    vq_dir = os.path.join(workdir, "vqvae")
    frozen_vq.save_untrained(vq_dir, vq_cfg)
    with config.unlocked():
      config.vqvae_workdir = vq_dir
  return tasks.make_task(config, os.path.join(workdir, config.stage))


def compiled_step(task, mesh, rules) -> tuple[Any, Any, Any, Any, Any]:
  """``(jitted_step, batch, key, abstract_state, state_shardings)`` for ``task`` on ``mesh``."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from vqd_jax import sharding as sharding_lib  # pylint: disable=import-outside-toplevel

  iterator = task.make_train_iterator(jax.process_index(), jax.process_count())
  batch = sharding_lib.global_batch(next(iterator), mesh)
  key = jax.random.key(0)
  boxed = jax.eval_shape(task.init_state, key, batch)
  shardings = sharding_lib.tree_shardings(boxed, mesh, rules)
  repl = sharding_lib.replicated(mesh)
  step = jax.jit(task.train_step, donate_argnums=(0,),
                 in_shardings=(shardings, sharding_lib.batch_sharding(mesh), repl),
                 out_shardings=(shardings, repl))
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          sharding_lib.strip_boxes(boxed), shardings)
  return step, batch, key, abstract, shardings


def set_host_device_count(n: int) -> None:
  """On CPU, pretend to have ``n`` devices (must run before jax is imported)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
