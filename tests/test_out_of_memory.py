"""Running out of device memory ends a command with what to change, not XLA's traceback.

The errors are real: XLA is asked for more memory than any machine has (2**62 bytes, past the
64-bit address space, so it fails whatever the system's overcommit setting)."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from vqd_jax import configs_io, encode, evaluate, out_of_memory, sample
from vqd_jax.benchmarks import common
from vqd_jax.benchmarks import train as bench_train


def _allocate_too_much():
  jax.jit(lambda: jnp.ones((2 ** 30, 2 ** 30), jnp.float32))().block_until_ready()


def test_xla_out_of_memory_errors_are_recognised_and_others_pass_through():
  with pytest.raises(RuntimeError) as real:
    _allocate_too_much()
  assert out_of_memory.is_out_of_memory(real.value)
  assert not out_of_memory.is_out_of_memory(RuntimeError("INTERNAL: something else"))
  assert not out_of_memory.is_out_of_memory(ValueError("Out of memory"))  # not XLA's
  with pytest.raises(SystemExit) as exit_info, out_of_memory.explained("it", "Fix it."):
    _allocate_too_much()
  assert str(exit_info.value).startswith("Error: it ran out of device memory (")
  assert str(exit_info.value).endswith("bytes.). Fix it.")
  with pytest.raises(RuntimeError, match="unrelated"), out_of_memory.explained("it", "Fix."):
    raise RuntimeError("unrelated")


def test_training_fixes_name_only_what_the_config_can_still_change():
  plain = configs_io.load_config("configs/diffusion.py:tiny")
  text = out_of_memory.training_fixes(plain)
  assert f"--config.train.batch_size (now {plain.train.batch_size})" in text
  assert "--config.model.remat=True" in text and "--config.model.dtype=bfloat16" in text
  lean = configs_io.load_config("configs/diffusion.py:tiny",
                                ["model.remat=True", "model.dtype=bfloat16"])
  text = out_of_memory.training_fixes(lean)
  assert "remat" not in text and "bfloat16" not in text and "--config.mesh.fsdp" in text


def test_train_out_of_device_memory_says_what_to_change(tmp_path):
  # 2**40 latent channels: the autoencoder's first step asks XLA for 576 TB.
  proc = subprocess.run(
      [sys.executable, "-m", "vqd_jax.train", "--config", "configs/vqvae.py:tiny",
       "--workdir", str(tmp_path / "run"), f"--config.model.latent_channels={2 ** 40}"],
      capture_output=True, text=True, check=False, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  # On a line of its own: the progress bar's line is ended first.
  assert "\nError: training ran out of device memory (" in proc.stderr
  assert "Lower --config.train.batch_size (now 4)" in proc.stderr
  assert "--config.model.dtype=bfloat16" in proc.stderr  # the autoencoder has no remat field
  assert "remat" not in proc.stderr


def _exit_message(run) -> str:
  with pytest.raises(SystemExit) as exit_info:
    run()
  return str(exit_info.value)


def test_sample_encode_and_evaluate_name_their_batch_size(tiny_run, tiny_vq_dir, tmp_path,
                                                         monkeypatch):
  monkeypatch.setattr(sample, "generate_to_folder", lambda *a, **k: _allocate_too_much())
  text = _exit_message(lambda: sample.main([
      "--workdir", tiny_run, "--prompt", "a red circle", "--batch-size", "5",
      "--out", str(tmp_path / "out")]))
  assert text.startswith("Error: sampling ran out of device memory (")
  assert text.endswith("Lower --batch-size (now 5).")
  monkeypatch.setattr(encode, "encode_dataset", lambda *a, **k: _allocate_too_much())
  text = _exit_message(lambda: encode.main([
      "--vqvae-workdir", tiny_vq_dir, "--config", "configs/diffusion.py:tiny",
      "--out", str(tmp_path / "tokens"), "--batch-size", "6"]))
  assert text.startswith("Error: encoding ran out of device memory (")
  assert text.endswith("Lower --batch-size (now 6).")
  monkeypatch.setattr(evaluate, "run_metric", lambda args: _allocate_too_much())
  text = _exit_message(lambda: evaluate.main([
      "bound", "--workdir", tiny_run, "--out", str(tmp_path / "bound"), "--batch-size", "7"]))
  assert text.startswith("Error: evaluate bound ran out of device memory (")
  assert text.endswith("Lower --batch-size (now 7).")


def test_bench_train_out_of_device_memory_names_the_config_settings(monkeypatch):
  monkeypatch.setattr(common, "compiled_step", lambda *a: _allocate_too_much())
  with pytest.raises(SystemExit) as exit_info:
    bench_train.main(["--config", "configs/diffusion.py:tiny", "--vqvae-config",
                      "configs/vqvae.py:tiny", "--config.train.batch_size=3"])
  assert str(exit_info.value).startswith("Error: the train step ran out of device memory (")
  assert "Lower --config.train.batch_size (now 3)" in str(exit_info.value)

