"""Multi-host start-up: JAX's own multi-controller runtime, one process per host."""

from __future__ import annotations

import importlib.util
import logging
import os
import pkgutil

import jax

log = logging.getLogger(__name__)


def _accelerator_plugin_installed() -> bool:
  """Whether a TPU or GPU runtime is installed (PJRT plugins live in ``jax_plugins``)."""
  if importlib.util.find_spec("libtpu") is not None:
    return True
  try:
    import jax_plugins  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


def runs_on_cpu() -> bool:
  """Whether JAX will run on the CPU, decided without starting a backend.

  Backends must not start before ``jax.distributed.initialize``, so this reads the requested
  platforms (``JAX_PLATFORMS`` / ``jax_platforms``) or, when none are requested, checks that no
  accelerator runtime is installed.
  """
  platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  return not _accelerator_plugin_installed()


def use_cpu_collectives() -> None:
  """Cross-process collectives on CPU through gloo (over TCP), unless another one was chosen.

  Without them a multi-process CPU program fails at its first cross-host reduction. Older jax
  releases default to none; an explicit choice (e.g. ``mpi``) is kept.
  """
  current = jax.config.jax_cpu_collectives_implementation
  if current in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    log.info("CPU cross-process collectives: gloo.")


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
  """Calls ``jax.distributed.initialize`` when running multi-host.

  TPU pod slices and SLURM are detected automatically (``VQD_DISTRIBUTED=1`` or the explicit flags
  turn it on); GPU clusters without SLURM pass the coordinator address, process count and id (or the
  ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` environment variables).
  ``JAX_LOCAL_DEVICE_IDS=0,1,...`` lists the GPUs a process uses (under SLURM JAX otherwise gives
  each task the one GPU of its local task id; ``launch/slurm_gpu.sh`` runs one task per node).
  CPU-only processes (several on one machine, or CPU clusters) get gloo collectives. Single-process
  runs need nothing. Must run before anything touches a JAX device.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  local_ids = os.environ.get("JAX_LOCAL_DEVICE_IDS")
  if coordinator_address or os.environ.get("VQD_DISTRIBUTED") == "1":
    if runs_on_cpu():
      use_cpu_collectives()
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id,
        local_device_ids=[int(i) for i in local_ids.split(",")] if local_ids else None)
