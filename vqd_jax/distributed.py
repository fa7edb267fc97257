"""Multi-host start-up: JAX's own multi-controller runtime, one process per host."""

from __future__ import annotations

import os

import jax


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
  """Calls ``jax.distributed.initialize`` when running multi-host.

  TPU pod slices and SLURM are detected automatically (``VQD_DISTRIBUTED=1`` or the explicit flags
  turn it on); GPU clusters without SLURM pass the coordinator address, process count and id (or the
  ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` environment variables).
  Single-process runs need nothing.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if coordinator_address or os.environ.get("VQD_DISTRIBUTED") == "1":
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
