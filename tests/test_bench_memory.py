"""The memory benchmark: under fsdp=8 each device holds about 1/8 of params + optimizer state + EMA,
and the compiler's own accounting of the step's inputs agrees with the benchmark's arithmetic."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_coverage import covers
from jax_test_env import FAST_COMPILE_FLAGS

ROOT = Path(__file__).resolve().parents[1]
# The tiny diffusion preset, widened to 128 (divisible by 8; a width-128 model's kernels outweigh
# its biases and norms as a real model's do), with the tiny autoencoder.
OVERRIDES = ["text.width=128", "text.num_heads=4", "model.num_heads=4", "model.head_dim=32",
             "model.num_layers=2"]


@pytest.fixture(scope="module")
def report():
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE_FLAGS)
  cmd = [sys.executable, "-m", "vqd_jax.bench", "memory", "--config", "configs/diffusion.py:tiny",
         "--mesh", "data=1,fsdp=8", "--vqvae-config", "configs/vqvae.py:tiny"]
  cmd += [f"--config.{item}" for item in OVERRIDES]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
                       check=False)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
  return json.loads(out.stdout[out.stdout.index("{"):])


@covers("bench memory --mesh")
def test_fsdp8_holds_an_eighth_of_the_state_per_device(report):
  # "--mesh data=1,fsdp=8": eight simulated devices, the state split eight ways.
  assert report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1} and report["devices"] == 8
  # The per-device bytes themselves are checked against the compiler's accounting below.
  assert report["state_bytes_per_device"] <= report["state_bytes_total"] / 8 * 1.1
  # The parts the sum is made of: Adam keeps two moments per parameter (plus scalar counts), the EMA
  # one copy; a benchmark that dropped a part would fail here.
  params = report["params_bytes_total"]
  assert report["ema_params_bytes_total"] == params
  assert 2 * params <= report["opt_state_bytes_total"] <= 2 * params + 64


@covers("bench memory --config")
def test_compiler_sees_the_same_per_device_state(report):
  # "--config configs/diffusion.py:tiny": the step of that config (batches of 8 32px images with
  # 16 text ids; T = 100), as the argument bytes below count them.
  # XLA's per-device argument bytes = the state shard + this device's batch rows + the key. The
  # batch (8 images of 32x32x3 uint8 + 16 text ids and mask) is small next to the state.
  state = report["state_bytes_per_device"]
  batch_bytes = 8 * (32 * 32 * 3 + 16 * 4 + 16)
  extra = 100 * 8 + 64  # loss history ([T] float32 + [T] int32, T=100), step counter, key
  assert state <= report["argument_size_in_bytes"] <= state + batch_bytes + extra
