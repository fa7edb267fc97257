"""The AR stage: kill-and-resume equals an uninterrupted run; its previews, the pipeline and the
sample command on a tiny trained run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cli_coverage import covers
from test_training_loop import _assert_resume_matches
from vqd_jax import configs_io, sample
from vqd_jax.inference.ar_pipeline import ARPipeline
from vqd_jax.training import loop


def test_ar_kill_and_resume_gives_the_same_next_losses(tmp_path, tiny_vq_dir):
  _assert_resume_matches("configs/ar.py:tiny", tmp_path, vqvae_workdir=tiny_vq_dir)

@pytest.fixture(scope="module")
def tiny_ar_run(tiny_vq_dir, tmp_path_factory):
  """A ``configs/ar.py:tiny`` run trained 4 steps."""
  workdir = str(tmp_path_factory.mktemp("ar") / "run")
  loop.train_and_evaluate(configs_io.load_config("configs/ar.py:tiny",
                                                 [f"vqvae_workdir={tiny_vq_dir}"]), workdir)
  return workdir


def test_pipeline_samples_the_same_tokens_with_and_without_the_cache(tiny_ar_run):
  pipe = ARPipeline.from_run(tiny_ar_run)
  assert pipe.checkpoint_step == 4
  prompts = ["a large red circle", "a small blue square"]
  kw = dict(seed=3, temperature=1.5, guidance_scale=2.0)
  cached = pipe.generate_tokens(prompts, use_cache=True, **kw)
  np.testing.assert_array_equal(cached, pipe.generate_tokens(prompts, use_cache=False, **kw))
  assert cached.shape == (2, pipe.model.num_tokens)
  assert not np.array_equal(cached, pipe.generate_tokens(prompts, use_cache=True, seed=4))
  images = pipe(prompts, seed=3)
  assert images.shape == (2, *pipe.image_size, 3) and images.dtype == np.uint8
  tokens = pipe.generate_tokens(prompts, seed=3)
  np.testing.assert_array_equal(images, pipe.autoencoder.decode(tokens))


# The records hold the settings object the sampler was called with.
@covers("sample --temperature", "sample --top-k", "sample --top-p", "sample --no-cache")
def test_sample_command_on_an_ar_run(tiny_ar_run, tmp_path, tiny_run):
  out = str(tmp_path / "out")
  args = ["--workdir", tiny_ar_run, "--prompt", "a large red circle", "--num-samples", "3",
          "--out", out]
  assert sample.main(args + ["--temperature", "0.8", "--top-k", "5", "--top-p", "0.9",
                             "--guidance", "1.5", "--no-cache"]) == 0
  with open(os.path.join(out, "samples.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 3 and records[0]["stage"] == "ar"
  assert (records[0]["temperature"], records[0]["top_k"], records[0]["top_p"],
          records[0]["guidance_scale"], records[0]["use_cache"]) == (0.8, 5, 0.9, 1.5, False)
  assert os.path.exists(os.path.join(out, "grid.png"))
  for flags, message in [(["--steps", "5"], "diffusion runs only"),
                         (["--top-p", "0"], "top_p must be"),
                         (["--temperature", "-1"], "temperature must be")]:
    with pytest.raises(SystemExit, match=message):
      sample.main(args + flags)
  with pytest.raises(SystemExit, match="AR runs only"):
    sample.main(["--workdir", tiny_run, "--prompt", "a red circle", "--out", out,
                 "--temperature", "0.5"])


def test_sample_command_names_a_missing_run_and_creates_nothing(tmp_path):
  missing = str(tmp_path / "no_run")
  with pytest.raises(SystemExit, match="No checkpoint in .*no_run/checkpoints"):
    sample.main(["--workdir", missing, "--prompt", "a red circle", "--out", str(tmp_path / "o")])
  assert not os.path.exists(missing)
