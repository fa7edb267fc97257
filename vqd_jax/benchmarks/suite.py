"""The one-command device benchmark: every figure that needs an accelerator, in one run.

  python -m vqd_jax.bench suite --out DIR [--quick] [--budget SECONDS]

Runs each benchmark below in its own process (so each sets up its devices as users run it), echoes
its output as it goes, then a summary table, and writes ``DIR/suite.json`` (one entry per
benchmark with its JSON result) after every benchmark, so a run stopped early keeps what it has
measured. A benchmark that fails is reported in the table and does not stop the others.

On an accelerator the whole suite keeps to ``--budget`` (default 345 s: six minutes with the time
to start): each benchmark may run for its share of what is left, and one that runs past it is
stopped and reported as such, so a slow compile costs its own figure, not the ones after it.
Without an accelerator (or with ``--quick``) it runs the same benchmarks at small sizes, in about
a minute on a CPU, with no budget unless one is given: the same code paths, figures that mean
little.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """``python -m vqd_jax.bench *full`` (``*quick`` at small sizes; empty: not run then);
  ``share_s``: its part of the default budget, in seconds."""
  name: str
  full: tuple[str, ...]
  quick: tuple[str, ...]
  share_s: float


_MODELS_S = ("models", "--scale", "S", "--full", "--batch-sizes")
SUITE: tuple[Benchmark, ...] = (
    Benchmark("sampler loop, K=4096 N=1024 B=16",
              ("sampler", "--batch-size", "16", "--num-steps", "50"),
              ("sampler", "--batch-size", "2", "--num-steps", "4", "--num-tokens", "64",
               "--num-classes", "256", "--repeats", "1"), 30),
    Benchmark("train step, quickstart denoiser (shapes)",
              ("train", "--config", "configs/diffusion.py:shapes", "--steps", "50"),
              ("train", "--config", "configs/diffusion.py:tiny", "--vqvae-config",
               "configs/vqvae.py:tiny", "--steps", "2"), 40),
    Benchmark("pipeline, VQ-Diffusion-S 50 steps B=8, vs diffusers",
              ("sample", "--preset", "S", "--steps", "50", "--batch-size", "8", "--repeats", "2"),
              ("sample", "--preset", "small", "--steps", "4", "--skip-diffusers"), 70),
    Benchmark("train step, VQ-Diffusion-B bf16 remat batch 64",
              ("train", "--config", "configs/diffusion.py:B", "--config.model.dtype=bfloat16",
               "--steps", "10"),
              ("train", "--config", "configs/ar.py:tiny", "--vqvae-config",
               "configs/vqvae.py:tiny", "--steps", "2"), 85),
    Benchmark("models at the paper's scale (S, 32x32 tokens), random weights, batch 1",
              (*_MODELS_S, "1"), ("models", "--scale", "tiny", "--batch-sizes", "1,4"), 60),
    Benchmark("models at the paper's scale (S, 32x32 tokens), random weights, batch 32",
              (*_MODELS_S, "32"), (), 60),
)
DEFAULT_BUDGET_S = sum(b.share_s for b in SUITE)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.bench suite", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help="Small sizes, for checking that the suite runs (figures mean little); the "
                      "default without an accelerator.")
  p.add_argument("--out", default=None,
                 help="Folder for suite.json (created if missing), rewritten after every "
                      "benchmark.")
  p.add_argument("--only", default=None,
                 help="Run only the benchmarks whose name contains this text.")
  p.add_argument("--budget", type=float, default=None,
                 help=f"Seconds for the whole suite, shared among its benchmarks in proportion "
                      f"to their shares (time one leaves unused goes to the ones after it); one "
                      f"that runs past its part is stopped and reported. Default "
                      f"{DEFAULT_BUDGET_S:.0f} on an accelerator, none for --quick; 0 = none.")
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


def bench_command(args: Sequence[str]) -> list[str]:
  return [sys.executable, "-m", "vqd_jax.bench", *args]


def run_one(command: Sequence[str], limit_s: float | None) -> tuple[int | None, str, float]:
  """``(exit code, combined output, seconds)`` of ``command``, its output echoed as it comes; the
  code is None when it ran past ``limit_s`` and was stopped, with every process it started."""
  t0 = time.perf_counter()
  # Its own process group (setsid), so that killing the group also stops what it started.
  proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
  lines: list[str] = []

  def echo():
    for line in proc.stdout:
      sys.stdout.write(line)
      sys.stdout.flush()
      lines.append(line)

  reader = threading.Thread(target=echo, daemon=True)
  reader.start()
  try:
    code = proc.wait(timeout=limit_s)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    code = None
  reader.join(timeout=10)  # the pipe closes once every process in the group is gone
  return code, "".join(lines), time.perf_counter() - t0


def time_limit(shares: Sequence[float], budget: float | None,
               spent: Sequence[float]) -> float | None:
  """The next benchmark's time limit: its share of what is left of ``budget`` after ``spent``
  (the seconds of those before it), or None without a budget."""
  if not budget:
    return None
  left = budget - sum(spent)
  upcoming = shares[len(spent):]
  return max(left, 0.0) * upcoming[0] / sum(upcoming)


def _row(bench_args: Sequence[str], name: str, code: int | None, output: str, seconds: float,
         limit: float | None) -> dict:
  ok = code == 0
  if code is None:
    error = f"stopped after {seconds:.0f} s, its part of the --budget"
  else:
    error = None if ok else (output.strip().splitlines() or [f"exit code {code}"])[-1]
  # A stopped benchmark keeps the last figures it printed (bench models prints as it goes).
  return {"name": name, "args": list(bench_args), "ok": ok, "stopped": code is None,
          "seconds": round(seconds, 1),
          "limit_s": None if limit is None else round(limit, 1),
          "result": _last_json(output) if ok or code is None else None, "error": error}


def _write(out: str | None, backend: str, quick: bool, budget: float | None, rows: list) -> None:
  if not out:
    return
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "suite.json")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"backend": backend, "quick": quick, "budget_s": budget, "benchmarks": rows}, f,
              indent=2)
  os.replace(path + ".tmp", path)


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.budget is not None and not 0 <= args.budget < float("inf"):
    parser.error(f"--budget is the suite's seconds (0 for no limit), got {args.budget}.")
  import jax  # pylint: disable=import-outside-toplevel
  backend = jax.default_backend()
  quick = args.quick or backend == "cpu"
  if quick and not args.quick:
    print("No accelerator: the suite's small sizes (figures mean little).", flush=True)
  budget = args.budget if args.budget is not None else (None if quick else DEFAULT_BUDGET_S)
  chosen = [b for b in SUITE if (b.quick or not quick) and (not args.only or args.only in b.name)]
  shares = [b.share_s for b in chosen]
  rows, spent = [], []
  for bench in chosen:
    bench_args = bench.quick if quick else bench.full
    limit = time_limit(shares, budget, spent)
    print(f"\n=== {bench.name}: python -m vqd_jax.bench {' '.join(bench_args)}"
          + ("" if limit is None else f"  (at most {limit:.0f} s)"), flush=True)
    code, output, seconds = run_one(bench_command(bench_args), limit)
    spent.append(seconds)
    rows.append(_row(bench_args, bench.name, code, output, seconds, limit))
    _write(args.out, backend, quick, budget, rows)
  print("\n=== summary")
  for row in rows:
    status = "ok" if row["ok"] else ("STOPPED" if row["stopped"] else "FAILED") + f": {row['error']}"
    print(f"{row['name']:<72} {row['seconds']:>7.1f} s  {status}")
  return 0 if all(r["ok"] for r in rows) else 1
