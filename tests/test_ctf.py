"""CTF: the fine stage's cluster restriction, coarse targets equal to the table applied to the
codes, kill-and-resume of every stage, encode's table, and both stages sampled together."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_coverage import covers
from test_training_loop import _assert_resume_matches
from vqd_jax import configs_io, ctf, encode, sample
from vqd_jax.inference.ctf_pipeline import CTFPipeline
from vqd_jax.training import loop, tasks


def _members(labels, c):
  return jnp.asarray(ctf.cluster_members(np.asarray(labels), c))


def test_restricted_fine_codes_never_leave_their_cluster():
  rng = np.random.default_rng(0)
  k, c, b, n = 24, 5, 64, 9
  labels = rng.integers(0, c, k)
  labels[:c] = np.arange(c)  # every cluster has a member
  members = _members(labels, c)
  coarse = jnp.asarray(rng.integers(0, c, (b, n)), jnp.int32)
  log_p = jax.nn.log_softmax(jnp.asarray(rng.standard_normal((b, n, k)) * 3, jnp.float32))
  for settings in (ctf.FineSamplerConfig(), ctf.FineSamplerConfig(temperature=3.0, top_k=2),
                   ctf.FineSamplerConfig(top_k=1)):
    codes = np.asarray(ctf.sample_fine(log_p, coarse, jax.random.key(1), settings, members))
    np.testing.assert_array_equal(labels[codes], coarse)
  # Unrestricted, the same draws leave their clusters often.
  free = np.asarray(ctf.sample_fine(log_p, coarse, jax.random.key(1), ctf.FineSamplerConfig()))
  assert (labels[free] != np.asarray(coarse)).mean() > 0.5


def test_restriction_renormalises_within_the_cluster():
  rng = np.random.default_rng(1)
  labels = np.array([0, 1, 0, 2, 1, 0])
  log_p = rng.standard_normal((1, 2, 6)).astype(np.float32)
  coarse = np.array([[0, 1]])
  got = np.asarray(ctf.restrict_to_clusters(jnp.asarray(log_p), jnp.asarray(coarse),
                                            _members(labels, 3)))
  for pos, cluster in enumerate(coarse[0]):
    inside = labels == cluster
    p = np.exp(log_p[0, pos][inside].astype(np.float64))
    np.testing.assert_allclose(np.exp(got[0, pos][inside]), p / p.sum(), rtol=1e-5)
    assert np.all(np.isneginf(got[0, pos][~inside]))


@pytest.mark.parametrize("preset", ["tiny_coarse", "tiny_coarse_vqd", "tiny_fine"])
def test_ctf_stages_resume_exactly(preset, tmp_path, tiny_vq_dir):
  _assert_resume_matches(f"configs/ctf.py:{preset}", tmp_path, vqvae_workdir=tiny_vq_dir)


def test_coarse_targets_are_the_table_applied_to_the_codes(tmp_path, tiny_vq_dir):
  for preset in ("tiny_coarse", "tiny_coarse_vqd"):
    config = configs_io.load_config(f"configs/ctf.py:{preset}", [f"vqvae_workdir={tiny_vq_dir}"])
    task = tasks.make_task(config, str(tmp_path / preset))
    batch = next(task.make_train_iterator(0, 1))
    codes = np.asarray(task._tokens(batch))  # pylint: disable=protected-access
    table = ctf.load_coarse_table(str(tmp_path / preset))
    np.testing.assert_array_equal(np.asarray(task.targets(batch)), table.labels[codes])
    assert task.num_classes == 4 == table.num_clusters
    # The table is k-means of the autoencoder's codebook, the same for every stage (seeded).
    want = ctf.kmeans(task.vq.codebook, 4, seed=0).labels
    np.testing.assert_array_equal(table.labels, want)


@pytest.fixture(scope="module")
def ctf_runs(tiny_vq_dir, tmp_path_factory):
  """Token records with a coarse table, and the three CTF stages trained 4 steps on them."""
  root = tmp_path_factory.mktemp("ctf")
  tokens = str(root / "tokens")
  assert encode.main(["--vqvae-workdir", tiny_vq_dir, "--config", "configs/diffusion.py:tiny",
                      "--out", tokens, "--num-examples", "64", "--batch-size", "32",
                      "--coarse-clusters", "4"]) == 0
  runs = {}
  for preset in ("tiny_coarse", "tiny_coarse_vqd", "tiny_fine"):
    runs[preset] = str(root / preset)
    config = configs_io.load_config(f"configs/ctf.py:{preset}", [
        f"vqvae_workdir={tiny_vq_dir}", "data.source=tokens", f"data.path={tokens}"])
    loop.train_and_evaluate(config, runs[preset])
  return tokens, runs


def test_runs_copy_the_token_folder_table(ctf_runs):
  tokens, runs = ctf_runs
  want = ctf.load_coarse_table(tokens).labels
  for run in runs.values():
    np.testing.assert_array_equal(ctf.load_coarse_table(run).labels, want)


def test_pipeline_draws_fine_codes_inside_the_sampled_clusters(ctf_runs):
  tokens, runs = ctf_runs
  labels_of = ctf.load_coarse_table(tokens).labels
  prompts = ["a large red circle", "a small blue square"]
  for first in ("tiny_coarse", "tiny_coarse_vqd"):
    pipe = CTFPipeline.from_runs(runs[first], runs["tiny_fine"])
    coarse, codes = pipe.generate_tokens(prompts, seed=2)
    n = pipe.fine_run.model.num_tokens
    assert coarse.shape == codes.shape == (2, n) and coarse.max() < 4
    np.testing.assert_array_equal(labels_of[codes], coarse)
    images = pipe(prompts, seed=2)
    np.testing.assert_array_equal(images, pipe.autoencoder.decode(codes))
  ar = CTFPipeline.from_runs(runs["tiny_coarse"], runs["tiny_fine"])
  cached = ar.generate_tokens(prompts, seed=5)
  uncached = ar.generate_tokens(prompts, seed=5, settings=ar.settings(use_cache=False))
  np.testing.assert_array_equal(cached[1], uncached[1])


# The records hold the settings object the two-stage sampler was called with.
@covers("sample --coarse-workdir", "sample --fine-temperature", "sample --fine-top-k",
        "sample --fine-guidance")
def test_sample_command_runs_both_stages_and_explains_mistakes(ctf_runs, tmp_path):
  _, runs = ctf_runs
  out = str(tmp_path / "out")
  base = ["--prompt", "a large red circle", "--num-samples", "2", "--out", out]
  args = ["--workdir", runs["tiny_fine"], "--coarse-workdir", runs["tiny_coarse"]] + base
  assert sample.main(args + ["--temperature", "1.1", "--fine-temperature", "0.9",
                             "--fine-top-k", "3", "--fine-guidance", "1.5"]) == 0
  with open(os.path.join(out, "samples.jsonl"), encoding="utf-8") as f:
    record = json.loads(f.readline())
  assert record["stage"] == "ctf" and record["coarse"]["temperature"] == 1.1
  assert record["fine"] == {"temperature": 0.9, "top_k": 3, "guidance_scale": 1.5}
  assert record["coarse_workdir"] == runs["tiny_coarse"]
  vqd = ["--workdir", runs["tiny_fine"], "--coarse-workdir", runs["tiny_coarse_vqd"]] + base
  assert sample.main(vqd + ["--steps", "4"]) == 0
  with open(os.path.join(out, "samples.jsonl"), encoding="utf-8") as f:
    record = json.loads(f.readline())
  # The diffusion first stage samples the coarse labels now: its settings, not the AR's.
  assert record["coarse"]["num_steps"] == 4 and "temperature" not in record["coarse"]
  for argv, message in [
      (["--workdir", runs["tiny_fine"]] + base, "--coarse-workdir"),
      (["--workdir", runs["tiny_coarse"]] + base, "first stage"),
      (["--workdir", runs["tiny_coarse_vqd"]] + base, "first stage"),
      (args + ["--steps", "4"], "do not apply to a ar first stage"),
      (vqd + ["--top-k", "4"], "do not apply to a diffusion first stage"),
      (args + ["--fine-temperature", "0"], "fine temperature"),
      (["--workdir", runs["tiny_coarse"], "--coarse-workdir", runs["tiny_fine"]] + base,
       "CTF.s first stage is an .ar. or"),
      (["--workdir", runs["tiny_coarse"]] + base + ["--fine-top-k", "2"], "CTF runs only")]:
    with pytest.raises(SystemExit, match=message):
      sample.main(argv)
