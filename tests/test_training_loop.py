"""The one training loop: kill-and-resume equals an uninterrupted run, for both stages; a checkpoint
that cannot be restored is an error; the CLIs explain their flags."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vqd_jax import configs_io
from vqd_jax import checkpoint as ckpt_lib
from vqd_jax.training import loop


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows}


def _config(spec, **overrides):
  config = configs_io.load_config(spec)
  config.train.log_every = 1
  for key, value in overrides.items():
    configs_io.set_field(config, key, str(value))
  return config


def _assert_resume_matches(spec, tmp_path, **overrides):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  loop.train_and_evaluate(_config(spec, **overrides), straight)
  loop.train_and_evaluate(_config(spec, **overrides), resumed, stop_after=2)
  assert ckpt_lib.Checkpointer(resumed).latest_step() == 2
  # A fresh process would do exactly this: build everything anew and find the checkpoint.
  loop.train_and_evaluate(_config(spec, **overrides), resumed)
  a, b = _losses(straight), _losses(resumed)
  assert sorted(a) == [1, 2, 3, 4] and sorted(b) == [1, 2, 3, 4]
  np.testing.assert_allclose([b[s] for s in (1, 2, 3, 4)], [a[s] for s in (1, 2, 3, 4)],
                             rtol=1e-5, atol=1e-6)
  # The steps after the restart are genuinely new work, not a replay of the same loss.
  assert a[3] != a[2]


def test_vqvae_kill_and_resume_gives_the_same_next_losses(tmp_path):
  _assert_resume_matches("configs/vqvae.py:tiny", tmp_path)


def test_diffusion_kill_and_resume_gives_the_same_next_losses(tmp_path, tiny_vq_dir):
  _assert_resume_matches("configs/diffusion.py:tiny", tmp_path, vqvae_workdir=tiny_vq_dir)


def test_quickstart_architecture_resumes_exactly_and_samples(tmp_path, tiny_vq_dir):
  """The quickstart's denoiser layout (token patches, Mix-FFN, relative position bias), read from
  its preset, through the whole loop at the tiny size."""
  shapes = _config("configs/diffusion.py:shapes").model
  arch = {f"model.{k}": shapes[k]
          for k in ("patch_size", "mlp_type", "mlp_ratio", "relative_position_bias")}
  assert arch["model.patch_size"] > 1 and arch["model.relative_position_bias"]
  _assert_resume_matches("configs/diffusion.py:tiny", tmp_path, vqvae_workdir=tiny_vq_dir, **arch)
  from vqd_jax import diffusion, sample  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference import VQDiffusionPipeline  # pylint: disable=import-outside-toplevel
  pipe = VQDiffusionPipeline.from_run(str(tmp_path / "resumed"))
  assert pipe.checkpoint_step == 4 and pipe.transformer.patch_size == arch["model.patch_size"]
  assert pipe.transformer.mlp_type == arch["model.mlp_type"]
  assert pipe.transformer.relative_position_bias
  out = str(tmp_path / "samples")
  settings = diffusion.SamplerConfig(**pipe.sampling_defaults)
  sample.generate_to_folder(pipe, ["a large red circle"], out, num_samples=1, settings=settings,
                            seed=0)
  assert os.path.exists(os.path.join(out, "00000.png"))


def test_unrestorable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(_config("configs/vqvae.py:tiny"), workdir, stop_after=2)
  # Same workdir, different model: restoring must fail loudly.
  changed = _config("configs/vqvae.py:tiny", **{"model.num_vq_embeddings": 64})
  with pytest.raises(ckpt_lib.CheckpointError, match="Refusing to silently start"):
    loop.train_and_evaluate(changed, workdir)


def test_diffusion_without_autoencoder_names_the_fix(tmp_path):
  config = _config("configs/diffusion.py:tiny", vqvae_workdir=str(tmp_path / "nothing"))
  with pytest.raises(FileNotFoundError, match="train the autoencoder first"):
    loop.train_and_evaluate(config, str(tmp_path / "dm"))


@pytest.mark.parametrize("module", ["vqd_jax.train", "vqd_jax.sample", "vqd_jax.evaluate",
                                    "vqd_jax.encode", "vqd_jax.quickstart", "vqd_jax.bench"])
def test_cli_help_documents_flags(module):
  out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                       timeout=120, check=False)
  text = out.stdout + out.stderr
  # absl's --help exits with 1 after printing the usage; argparse exits with 0.
  assert out.returncode == (1 if module == "vqd_jax.train" else 0), text
  for flag in {"vqd_jax.train": ["--workdir", "--config", "--stop_after"],
               "vqd_jax.sample": ["--prompt", "--num-samples", "--steps", "--guidance",
                                  "--truncation", "--seed", "--out"],
               "vqd_jax.evaluate": ["shapes"],
               "vqd_jax.encode": ["--vqvae-workdir", "--out"],
               "vqd_jax.quickstart": ["--workdir", "--long", "--num-prompts", "--vqvae.",
                                      "--diffusion."],
               "vqd_jax.bench": ["sampler", "train", "memory"]}[module]:
    assert flag in text, f"{module} --help does not mention {flag}"


def test_quickstart_rejects_a_prompt_count_below_one_before_training():
  from vqd_jax import quickstart  # pylint: disable=import-outside-toplevel
  with pytest.raises(SystemExit, match="--num-prompts must be at least 1, got 0"):
    quickstart.main(["--workdir", "unused", "--num-prompts", "0"])
