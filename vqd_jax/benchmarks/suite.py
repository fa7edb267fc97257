"""The one-command device benchmark: every figure that needs an accelerator, in one run.

  python -m vqd_jax.bench suite --out DIR [--quick]

Runs each benchmark below in its own process (so each sets up its devices as users run it), prints
its output as it goes, then a summary table, and writes ``DIR/suite.json`` (one entry per
benchmark with its JSON result). A benchmark that fails is reported in the table and does not stop
the others. Without an accelerator (or with ``--quick``) it runs the same benchmarks at small sizes,
in about a minute on a CPU: the same code paths, figures that mean little.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

# (name, `python -m vqd_jax.bench` arguments, quick arguments)
SUITE: tuple[tuple[str, list[str], list[str]], ...] = (
    ("sampler loop, K=4096 N=1024 B=16",
     ["sampler", "--batch-size", "16", "--num-steps", "50"],
     ["sampler", "--batch-size", "2", "--num-steps", "4", "--num-tokens", "64",
      "--num-classes", "256", "--repeats", "1"]),
    ("train step, quickstart denoiser (shapes)",
     ["train", "--config", "configs/diffusion.py:shapes", "--steps", "50"],
     ["train", "--config", "configs/diffusion.py:tiny", "--vqvae-config", "configs/vqvae.py:tiny",
      "--steps", "2"]),
    ("train step, VQ-Diffusion-B bf16 remat batch 64",
     ["train", "--config", "configs/diffusion.py:B", "--config.model.dtype=bfloat16",
      "--steps", "10"],
     ["train", "--config", "configs/ar.py:tiny", "--vqvae-config", "configs/vqvae.py:tiny",
      "--steps", "2"]),
    ("models at the paper's scale (S, 32x32 tokens), random weights",
     ["models", "--scale", "S", "--batch-sizes", "1,32", "--full"],
     ["models", "--scale", "tiny", "--batch-sizes", "1,4"]),
    ("pipeline, VQ-Diffusion-S 50 steps B=8, vs diffusers",
     ["sample", "--preset", "S", "--steps", "50", "--batch-size", "8",
      "--repeats", "2"],
     ["sample", "--preset", "small", "--steps", "4", "--skip-diffusers"]),
)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.bench suite", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help="Small sizes, for checking that the suite runs (figures mean little); the "
                      "default without an accelerator.")
  p.add_argument("--out", default=None, help="Folder for suite.json (created if missing).")
  p.add_argument("--only", default=None,
                 help="Run only the benchmarks whose name contains this text.")
  return p


def _last_json(text: str) -> dict | None:
  """The last line of ``text`` that parses as a JSON object (each benchmark prints one)."""
  for line in reversed(text.splitlines()):
    line = line.strip()
    if line.startswith("{") and line.endswith("}"):
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        continue
  return None


def run_one(args: list[str]) -> tuple[int, str, float]:
  """``(exit code, combined output, seconds)`` of ``python -m vqd_jax.bench *args``."""
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "vqd_jax.bench", *args], capture_output=True,
                        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
  return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  import jax  # pylint: disable=import-outside-toplevel
  quick = args.quick or jax.default_backend() == "cpu"
  if quick and not args.quick:
    print("No accelerator: the suite's small sizes (figures mean little).", flush=True)
  rows = []
  for name, full, small in SUITE:
    bench_args = small if quick else full
    if not bench_args or (args.only and args.only not in name):
      continue
    print(f"\n=== {name}: python -m vqd_jax.bench {' '.join(bench_args)}", flush=True)
    code, output, seconds = run_one(bench_args)
    print(output, flush=True)
    result = _last_json(output) if code == 0 else None
    rows.append({"name": name, "args": bench_args, "ok": code == 0, "seconds": round(seconds, 1),
                 "result": result,
                 "error": None if code == 0 else output.strip().splitlines()[-1:]})
  print("\n=== summary")
  for row in rows:
    status = "ok" if row["ok"] else f"FAILED: {row['error']}"
    print(f"{row['name']:<55} {row['seconds']:>7.1f} s  {status}")
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "suite.json"), "w", encoding="utf-8") as f:
      json.dump({"backend": jax.default_backend(), "quick": quick, "benchmarks": rows}, f,
                indent=2)
  return 0 if all(r["ok"] for r in rows) else 1
