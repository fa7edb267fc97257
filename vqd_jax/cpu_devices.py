"""One XLA CPU device per core, so CPU programs run data-parallel across the cores.

XLA's CPU backend gives each compiled program one device and parallelises inside ops. For the
small, many-op programs of this library (a denoiser step, a sampler step) that keeps about 1.4 of
2 cores busy. Splitting the host into one device per core and sharding the batch over them runs
each core's share of the whole program side by side instead (``--xla_cpu_multi_thread_eigen=false``
keeps the devices' Eigen calls from competing for one thread pool). Measured on a 2-core CPU:
sampling the S-size model (2 images, guidance, 10 steps) 43-47 s -> 23-25 s per call with
identical images (``bench sample``); 100 quickstart prompts 16.4 s -> 13.6 s.

Training is the other way round, so training commands keep XLA's single threaded device unless
told otherwise (``configure(training=True)``). Measured on 2 cores, 2026-12-02, back to back: the
quickstart denoiser's train loop (2x2 token patches, batch 32) 8.8 steps/s on one device against
7.5 on two (``bench train``: 9.32 against 7.27), the quickstart autoencoder 39 against 35 steps/s.
A train step of these small models is many small fusions; splitting the batch halves each fusion
and adds a gradient all-reduce, while one device threads the larger ones across both cores.

The command lines (``train``, ``sample``, ``quickstart``, ``bench``, ``encode``) call
:func:`configure` before importing jax (``train``, ``quickstart`` and ``bench train`` as training
commands). Flags only take effect then, so it does nothing once jax is imported.
``VQD_CPU_DEVICES=N`` picks the count for every command (``1`` = XLA's default: one device using
every core); flags already in ``XLA_FLAGS`` win. Accelerator backends ignore all of this.
"""

from __future__ import annotations

import os
import sys

ENV_VAR = "VQD_CPU_DEVICES"
# Above this many cores, one single-threaded device per core starves programs whose batch has
# fewer rows than devices (one image to sample); keep XLA's threaded ops there.
MAX_DEFAULT_DEVICES = 8


def default_device_count(training: bool = False) -> int:
  """Devices to create: ``$VQD_CPU_DEVICES``; else 1 for training commands; else the core count
  when it is at most 8, else 1."""
  value = os.environ.get(ENV_VAR, "").strip()
  if value:
    try:
      count = int(value)
    except ValueError:
      raise ValueError(f"{ENV_VAR}={value!r} is not an integer: set it to the number of XLA CPU "
                       "devices (1 keeps XLA's default: one device threading inside ops).") from None
    if count < 1:
      raise ValueError(f"{ENV_VAR}={count} must be >= 1.")
    return count
  if training:
    return 1
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  cores = cores or 1
  return cores if cores <= MAX_DEFAULT_DEVICES else 1


def with_host_device_flags(flags: str, count: int) -> str:
  """``flags`` (an ``XLA_FLAGS`` value) plus ``count`` host devices with single-threaded ops.

  Unchanged when ``count <= 1`` or the flags already set a device count; an explicit
  ``xla_cpu_multi_thread_eigen`` is kept.
  """
  if count <= 1 or "xla_force_host_platform_device_count" in flags:
    return flags
  extra = [f"--xla_force_host_platform_device_count={count}"]
  if "xla_cpu_multi_thread_eigen" not in flags:
    extra.append("--xla_cpu_multi_thread_eigen=false")
  return " ".join([flags.strip()] + extra).strip()


def configure(count: int | None = None, *, training: bool = False) -> int | None:
  """Adds the host-device flags to ``XLA_FLAGS``; returns the count set, or None if unchanged.

  ``count`` None: :func:`default_device_count` (``training`` picks the training default).

  Unchanged when jax is already imported (too late), when the count is 1, or when ``XLA_FLAGS``
  already sets ``xla_force_host_platform_device_count`` (the user's choice wins).
  """
  if "jax" in sys.modules:
    return None
  count = default_device_count(training) if count is None else int(count)
  flags = os.environ.get("XLA_FLAGS", "")
  new_flags = with_host_device_flags(flags, count)
  if new_flags == flags:
    return None
  os.environ["XLA_FLAGS"] = new_flags
  return count
