"""``python -m vqd_jax.bench suite`` on CPU (its small sizes) and ``bench models``' FLOP counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from vqd_jax.benchmarks import models_rows


def test_suite_runs_every_benchmark_on_cpu(tmp_path):
  out = str(tmp_path / "suite")
  proc = subprocess.run([sys.executable, "-m", "vqd_jax.bench", "suite", "--out", out],
                        capture_output=True, text=True, check=False,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(os.path.join(out, "suite.json"), encoding="utf-8") as f:
    report = json.load(f)
  assert report["quick"] and report["backend"] == "cpu"
  names = [b["name"] for b in report["benchmarks"]]
  assert len(names) == 5 and all(b["ok"] and b["result"] for b in report["benchmarks"]), names
  models = next(b for b in report["benchmarks"] if b["name"].startswith("models"))
  methods = {r["method"] for r in models["result"]["rows"]}
  assert {"AR cached K=16", "AR uncached K=16", "VQD 25 steps K=16"} <= methods


def test_model_flops_scale_with_the_calls_they_make():
  rows = models_rows.scale_rows("tiny", [2], [25, 50], [32], 4, guidance=2.0, full=False)
  by = {r["method"]: r for r in rows}
  # Every VQD step is the same call: twice the steps, exactly twice the FLOPs.
  assert by["VQD 50 steps K=16"]["gflops_per_image"] == 2 * by["VQD 25 steps K=16"][
      "gflops_per_image"]
  # Uncached AR reruns the whole sequence (N = 16 positions) at every position; cached decoding
  # processes each position once and projects the text once: about one forward's work in all.
  ratio = by["AR uncached K=16"]["gflops_per_image"] / by["AR cached K=16"]["gflops_per_image"]
  assert 0.8 * 16 < ratio < 1.2 * 16
  assert all(r["images_per_s"] > 0 for r in rows)
