"""Benchmarks that print figures (speed, memory, MFU); never part of the test suite.

  python -m vqd_jax.bench sampler [--help]   sampler loop overhead vs the bare denoiser
  python -m vqd_jax.bench train   [--help]   train-step steps/s, tokens/s, FLOP/s and MFU
  python -m vqd_jax.bench memory  [--help]   per-device bytes of a compiled train step on a mesh
  python -m vqd_jax.bench sample  [--help]   full pipeline images/s vs diffusers
  python -m vqd_jax.bench models  [--help]   VQD, AR, CTF, CTF-VQD: images/s and FLOPs per image
  python -m vqd_jax.bench suite   [--help]   all of the above as the README reports them
  python -m vqd_jax.bench chaos   [--help]   SIGKILL a training run at random, compare the result
  python -m vqd_jax.bench fuzz    [--help]   bad inputs to every command line: each handled, or not
"""

from __future__ import annotations

import sys

from vqd_jax import cpu_devices

_COMMANDS = {
    "sampler": "vqd_jax.benchmarks.sampler",
    "train": "vqd_jax.benchmarks.train",
    "memory": "vqd_jax.benchmarks.memory",
    "sample": "vqd_jax.benchmarks.sample_vs_diffusers",
    "models": "vqd_jax.benchmarks.models",
    "suite": "vqd_jax.benchmarks.suite",
    "chaos": "vqd_jax.benchmarks.chaos",
    "fuzz": "vqd_jax.benchmarks.fuzz",
}


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in _COMMANDS:
    print(__doc__)
    return 0 if argv and argv[0] in ("-h", "--help") else 2
  import importlib  # pylint: disable=import-outside-toplevel
  if argv[0] in ("sample", "train"):  # measured as users run them (see vqd_jax.cpu_devices)
    cpu_devices.configure(training=argv[0] == "train")
  module = importlib.import_module(_COMMANDS[argv[0]])
  return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
  sys.exit(main())
