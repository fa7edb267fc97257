r"""Trains a stage (VQ autoencoder, diffusion denoiser, AR model, CTF stage), resuming from the
latest checkpoint.

  python -m vqd_jax.train --config configs/vqvae.py:shapes --workdir runs/vq
  python -m vqd_jax.train --config configs/diffusion.py:shapes --workdir runs/dm \
      --config.vqvae_workdir=runs/vq --config.train.num_steps=5000
  python -m vqd_jax.train --config configs/ar.py:shapes --workdir runs/ar --config.vqvae_workdir=runs/vq

Any config field can be overridden with ``--config.<field>=<value>``. ``configs/...`` paths are
found relative to the working directory, else among the configs installed with vqd_jax. Re-running
the same command after a crash or preemption continues from the last checkpoint in ``--workdir``
(``--config.train.restore_step=N`` goes back to an older one). A workdir in use by another training
process, a checkpoint that cannot be restored or saved, a missing autoencoder run, data that
cannot be read, NaN/inf losses and running out of device memory stop the run with a message
saying what to do and a non-zero exit code.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from vqd_jax import configs_io, cpu_devices, out_of_memory

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and preset, e.g. configs/diffusion.py:shapes (presets are listed "
    "in each config file's docstring). Override fields with --config.<field>=<value>.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (local path or gs://...) for checkpoints, metrics.jsonl, "
    "TensorBoard logs and preview grids. An existing run there is resumed.")
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after", None, "Stop after this many steps as if preempted (checkpoint, then exit); the "
    "learning-rate schedule still follows config.train.num_steps.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host GPU runs: host:port of process 0 "
    "(TPU pods and SLURM are detected automatically).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def quiet_library_logs() -> None:
  """orbax and grain log every save/read at INFO through absl; keep the console for our progress."""
  for name in ("absl", "orbax", "grain"):
    logging.getLogger(name).setLevel(logging.WARNING)


def resolve_config_argument(argv: list[str]) -> list[str]:
  """``argv`` with the file of ``--config PATH[:preset]`` resolved (see ``configs_io.resolve``).

  The config is loaded once first and every ``--config.<field>`` override checked to name a
  field, so that a missing file, an error inside it, an unknown preset or field exits with its
  message (config_flags would print a traceback).
  """
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      value = arg[len("--config="):]
      out[i] = "--config=" + _checked_spec(value, argv)
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = _checked_spec(out[i + 1], argv)
  return out


def _checked_spec(spec: str, argv: list[str]) -> str:
  try:
    config = configs_io.load_config(spec)
    for item in configs_io.pop_override_flags(argv)[1]["config"]:
      configs_io.field_parent(config, item.partition("=")[0], f"--config.{item}")
  except (FileNotFoundError, ValueError) as e:
    # What absl prints for a bad flag, and its exit code.
    sys.exit(f"FATAL Flags parsing error: {e}\n"
             "Pass --helpshort or --helpfull to see help on flags.")
  return configs_io.resolve_spec(spec)


def parse_flags(argv: list[str]) -> list[str]:
  # The config file is loaded while flags are parsed, and it imports jax: set up devices first.
  cpu_devices.configure(training=True)
  return app.parse_flags_with_usage(resolve_config_argument(argv))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  quiet_library_logs()
  from vqd_jax import distributed  # pylint: disable=import-outside-toplevel
  distributed.maybe_initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from vqd_jax.data import configured as data  # pylint: disable=import-outside-toplevel
  from vqd_jax.training import loop  # pylint: disable=import-outside-toplevel
  try:  # a preset without data: say what to set, without a traceback
    data.check_data_config(_CONFIG.value.data, _CONFIG.value.stage)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  from vqd_jax import checkpoint  # pylint: disable=import-outside-toplevel
  from vqd_jax.data import DataSourceError  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference import loading  # pylint: disable=import-outside-toplevel
  from vqd_jax.training import nonfinite, workdir_lock  # pylint: disable=import-outside-toplevel
  fixes = (out_of_memory.training_fixes(_CONFIG.value)
           + " The run resumes from its last checkpoint.")
  try:
    with out_of_memory.explained("training", fixes):
      metrics = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                        stop_after=_STOP_AFTER.value)
  except (checkpoint.CheckpointError, workdir_lock.WorkdirLockError, nonfinite.NonFiniteError,
          DataSourceError, loading.MissingRunError, loading.RunMismatchError) as e:
    # Each message names the problem and the fix; a traceback would only bury it.
    sys.exit(f"Error: {e}")
  logging.info("Done: %s", {k: round(v, 5) for k, v in metrics.items()})


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
