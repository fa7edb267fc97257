"""Shared setup for the train-step benchmarks: a task, its sharded state and a compiled step."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import sys
import tempfile
from typing import Any

import ml_collections

# The untrained autoencoder a diffusion benchmark gets, by image size: the quickstart one for the
# small shapes images, the ITHQ architecture (8x downsampling, 4096 codes) for 256x256 presets.
DEFAULT_VQVAE_CONFIGS = {32: "configs/vqvae.py:shapes", 256: "configs/vqvae.py:ithq"}


def default_vqvae_config(image_size: int) -> str:
  if image_size not in DEFAULT_VQVAE_CONFIGS:
    raise ValueError(f"No default autoencoder for {image_size}px images; pass --vqvae-config "
                     f"(one of {sorted(DEFAULT_VQVAE_CONFIGS.values())} or your own).")
  return DEFAULT_VQVAE_CONFIGS[image_size]


def prepare_task(config: ml_collections.ConfigDict, vqvae_config: str | None):
  """The task for ``config``; a diffusion config without a trained autoencoder gets an untrained
  one (same shapes and cost) saved in a temporary run directory."""
  from vqd_jax.training import tasks  # pylint: disable=import-outside-toplevel
  workdir = tempfile.mkdtemp(prefix="vqd_bench_")
  # The untrained autoencoder of a 256px preset weighs hundreds of MB; benchmarks leave nothing.
  atexit.register(shutil.rmtree, workdir, ignore_errors=True)
  if not config.data.source:
    # Presets for real datasets name none; the step's cost is the same on procedural images.
    print(f"Benchmark data: procedural shapes at {config.data.image_size}px (the config names "
          "no data.source).", file=sys.stderr)
    with config.unlocked():
      config.data.source = "shapes"
  if config.stage != "vqvae" and not config.vqvae_workdir:
    from vqd_jax import configs_io  # pylint: disable=import-outside-toplevel
    from vqd_jax.training import vqvae_task  # pylint: disable=import-outside-toplevel
    vq_cfg = configs_io.load_config(vqvae_config or default_vqvae_config(config.data.image_size))
    vq_dir = os.path.join(workdir, "vqvae")
    vqvae_task.save_untrained(vq_dir, vq_cfg)
    with config.unlocked():
      config.vqvae_workdir = vq_dir
  return tasks.make_task(config, os.path.join(workdir, config.stage))


def abstract_state(task, mesh, rules) -> tuple[Any, Any, Any, Any]:
  """``(batch, key, abstract_state, state_shardings)``: the sharded state's shapes, never built."""
  import jax  # pylint: disable=import-outside-toplevel
  from vqd_jax import sharding as sharding_lib  # pylint: disable=import-outside-toplevel

  iterator = task.make_train_iterator(*sharding_lib.process_batch_slot(mesh))
  batch = sharding_lib.global_batch(next(iterator), mesh)
  key = jax.random.key(0)
  boxed = jax.eval_shape(task.init_state, key, batch)
  shardings = sharding_lib.tree_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          sharding_lib.strip_boxes(boxed), shardings)
  return batch, key, abstract, shardings


def compiled_step(task, mesh, rules) -> tuple[Any, Any, Any, Any, Any]:
  """``(jitted_step, batch, key, abstract_state, state_shardings)`` for ``task`` on ``mesh``."""
  import jax  # pylint: disable=import-outside-toplevel
  from vqd_jax import sharding as sharding_lib  # pylint: disable=import-outside-toplevel

  batch, key, abstract, shardings = abstract_state(task, mesh, rules)
  repl = sharding_lib.replicated(mesh)
  from vqd_jax.training.loop import keyed_train_step  # pylint: disable=import-outside-toplevel
  # The training loop's own step: the key is folded with the step number inside the program.
  step = jax.jit(functools.partial(keyed_train_step, task), donate_argnums=(0,),
                 in_shardings=(shardings, sharding_lib.batch_sharding(mesh), repl),
                 out_shardings=(shardings, repl))
  return step, batch, key, abstract, shardings


def set_host_device_count(n: int) -> None:
  """On CPU, pretend to have ``n`` devices (must run before jax is imported)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
