"""The one-command benchmark: every figure the README reports, measured in one run.

  python -m vqd_jax.bench suite [--quick] [--out results.jsonl]

Runs each benchmark below in its own process (so each sets up its devices as users run it), prints
its output as it goes, then a summary table, and writes one JSON line per benchmark to ``--out``.
A benchmark that fails is reported in the table and does not stop the others. ``--quick`` runs
small sizes (a CPU smoke run of the suite itself; its figures mean little).
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
    ("train step, VQ-Diffusion-S bf16 batch 32",
     ["train", "--config", "configs/diffusion.py:S", "--config.model.dtype=bfloat16",
      "--steps", "20"],
     []),
    ("pipeline, VQ-Diffusion-S 50 steps B=8, vs diffusers",
     ["sample", "--vs-diffusers", "--preset", "S", "--steps", "50", "--batch-size", "8",
      "--repeats", "2"],
     ["sample", "--vs-diffusers", "--preset", "small", "--steps", "4", "--skip-diffusers"]),
)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.bench suite", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help="Small sizes, for checking that the suite runs (figures mean little).")
  p.add_argument("--out", default=None, help="Write one JSON line per benchmark to this file.")
  p.add_argument("--only", default=None,
                 help="Run only the benchmarks whose name contains this text.")
  return p.parse_args(argv)


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
  args = _parse(argv)
  rows = []
  for name, full, quick in SUITE:
    bench_args = quick if args.quick else full
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
    with open(args.out, "w", encoding="utf-8") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
  return 0 if all(r["ok"] for r in rows) else 1
