"""``python -m vqd_jax.bench suite`` on CPU (its small sizes) and ``bench models``' FLOP counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cli_coverage import covers
from vqd_jax import configs_io
from vqd_jax.benchmarks import models_rows
from vqd_jax.benchmarks import sample_vs_diffusers
from vqd_jax.training import vqvae_task
from vqd_jax.transformer.presets import PRESETS


@covers("bench suite --out", "bench models --scale", "bench models --batch-sizes",
        "bench train --config", "bench train --vqvae-config", "bench sample --preset",
        "bench sample --skip-diffusers")
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
  # What the quick sizes ask for shows in each result: the tiny models (K = the tiny preset's
  # codes) at the batch sizes asked for ...
  assert models["args"] == ["models", "--scale", "tiny", "--batch-sizes", "1,4"]
  assert PRESETS["tiny"]["num_classes"] == 16
  assert {r["batch"] for r in models["result"]["rows"]} == {1, 4}
  # ... each train step of its config's batch, on the tiny autoencoder's token grid (the 32px
  # default autoencoder has another), the two configs' steps of different cost ...
  trains = [b for b in report["benchmarks"] if b["args"][0] == "train"]
  assert [b["args"][1:5] for b in trains] == [
      ["--config", "configs/diffusion.py:tiny", "--vqvae-config", "configs/vqvae.py:tiny"],
      ["--config", "configs/ar.py:tiny", "--vqvae-config", "configs/vqvae.py:tiny"]]
  tokens = vqvae_task.VQVAETask(configs_io.load_config("configs/vqvae.py:tiny"),
                                str(tmp_path / "vq")).num_tokens
  for bench in trains:
    result = bench["result"]
    assert result["config"] == bench["args"][2]
    assert result["batch_size"] == configs_io.load_config(bench["args"][2]).train.batch_size
    assert result["tokens_per_s"] / result["steps_per_s"] == pytest.approx(
        result["batch_size"] * tokens)
  assert len({b["result"]["step_flops_per_device"] for b in trains}) == 2
  # ... and the pipeline of the small preset, timed without diffusers.
  sample = next(b for b in report["benchmarks"] if b["args"][0] == "sample")
  assert sample["args"][1:3] == ["--preset", "small"]
  assert "--skip-diffusers" in sample["args"]
  config = sample["result"]["config"]
  small = sample_vs_diffusers.PRESETS["small"]
  assert {k: config[k] for k in small if k in config} == {k: v for k, v in small.items()
                                                          if k in config}
  assert config["num_codes"] != sample_vs_diffusers.PRESETS["S"]["num_codes"]
  assert "vqd_jax_s" in sample["result"] and "diffusers_s" not in sample["result"]


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
