"""``evaluate bound``: each term against float64 Bayes posteriors over explicit transition
matrices, the prior against the matrix product, and the command's flags."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from cli_coverage import covers
from test_diffusion_schedule_and_posterior import _brute_force
from vqd_jax import evaluate
from vqd_jax.diffusion import MaskAndReplace
from vqd_jax.evaluation import bound, heldout
from vqd_jax.inference import VQDiffusionPipeline


@pytest.mark.parametrize("schedule", ["released", "paper"])
def test_prior_is_the_kl_of_the_last_cumulative_matrix_row(schedule):
  k, t_count = 5, 12
  cum, _ = _brute_force(schedule, k, t_count)
  process = MaskAndReplace(num_classes=k, num_timesteps=t_count, schedule=schedule)
  x0 = np.array([[0, 4, 2], [1, 1, 3]], np.int32)
  q = cum[t_count][x0]                                  # [B, N, K+1] rows of Q̄_T
  c_bar = cum[t_count][0, k]
  p = np.array([(1 - c_bar) / k] * k + [c_bar])
  want = np.sum(q * np.log(q / p), axis=-1).mean(axis=-1)
  np.testing.assert_allclose(bound.prior_per_token(process, jnp.asarray(x0)), want, rtol=1e-4,
                             atol=1e-7)


def _bayes_term(p_x0, x0, x_t, t, cum):
  """float64 L_t / N of one example: KL(q(x_{t-1} | x_t, x0) ‖ p(x_{t-1} | x_t)), or the
  decoder NLL at t = 0; ``cum[t + 1]`` = Q̄_t, ``cum[0]`` the identity."""
  k = p_x0.shape[-1]
  prev = cum[t]                                     # Q̄ up to x_{t-1} (identity: x_{-1} = x0)
  step = np.linalg.solve(prev, cum[t + 1])          # q(x_t | x_{t-1})
  total = 0.0
  for n, j in enumerate(x_t):
    # Σ_k w_k q(x_{t-1} | x_t = j, x0 = k), each q by Bayes' rule.
    given = lambda w, j=j: w @ (prev[:k] * step[:, j][None, :] / cum[t + 1][:k, j][:, None])
    model = given(p_x0[n])
    if t == 0:
      total -= np.log(model[x0[n]])
    else:
      true = given(np.eye(k)[x0[n]])
      nz = true > 1e-30
      total += np.sum(true[nz] * np.log(true[nz] / model[nz]))
  return total / len(x_t)


@pytest.fixture(scope="module")
def pipe(tiny_run):
  return VQDiffusionPipeline.from_run(tiny_run)


def test_terms_are_the_bayes_kl_of_the_model_at_the_drawn_tokens(pipe, tiny_run):
  held = heldout.run_examples(tiny_run, 3)
  timesteps = [0, 1, 57, pipe.num_timesteps - 1]
  terms, _ = bound.bound_terms(pipe, held.images, held.captions, timesteps, seed=3, batch_size=2)
  process = pipe.generator.process
  assert process.schedule == "released"  # the tiny preset's; Q̄_t from its definition, float64
  cum, _ = _brute_force("released", pipe.num_codes, pipe.num_timesteps)
  x0 = np.asarray(pipe.encode_image(held.images))
  ids, mask = pipe.tokenize(held.captions)
  states = pipe.encode_prompt(held.captions)
  for row, t in enumerate(timesteps):
    keys = bound.example_keys(3, t, range(3))
    x_t = np.stack([np.asarray(process.q_sample(keys[i], x0[i:i + 1], t))[0] for i in range(3)])
    p_x0 = np.exp(np.asarray(pipe.denoise_logits(x_t, states, t, mask), np.float64))
    want = [_bayes_term(p_x0[i] / p_x0[i].sum(-1, keepdims=True), x0[i], x_t[i], t, cum)
            for i in range(3)]
    np.testing.assert_allclose(terms[row], want, rtol=2e-3, atol=1e-5)
  assert ids.shape[0] == 3 and np.all(terms >= 0)


def test_summary_ranges_and_the_whole_bound():
  terms = np.array([[1.0, 3.0], [2.0, 2.0], [4.0, 6.0]])   # t = 0, 2, 4 of T = 6 (stride 2)
  prior = np.array([0.5, 1.5])
  report = bound.summarize(terms, prior, [0, 2, 4], 6, [3])
  assert report["ranges"]["0-2"][0] == pytest.approx(2.0)    # mean of t=0 and t=2 rows
  assert report["ranges"]["3-5"] == pytest.approx([5.0, 1.0])
  # Each evaluated t stands for 2 steps: per example 0.5 + 2·7 and 1.5 + 2·11.
  assert report["bound"][0] == pytest.approx((14.5 + 23.5) / 2)
  assert report["bound"][1] == pytest.approx(np.std([14.5, 23.5], ddof=1) / np.sqrt(2))


@covers("evaluate bound --workdir", "evaluate bound --out", "evaluate bound --num-examples",
        "evaluate bound --t-stride", "evaluate bound --ranges", "evaluate bound --batch-size",
        "evaluate bound --seed")
def test_the_command_reports_the_ranges_and_bound_asked_for(tiny_run, tmp_path, capsys):
  def report(*flags):
    out = str(tmp_path / "_".join(flags))
    assert evaluate.main(["bound", "--workdir", tiny_run, "--out", out, "--num-examples", "5",
                          "--t-stride", "25", *flags]) == 0
    with open(os.path.join(out, "bound.json"), encoding="utf-8") as f:
      return json.load(f)

  first = report("--ranges", "40", "--batch-size", "2", "--seed", "1")
  assert first["num_examples"] == 5 and first["timesteps"] == [0, 25, 50, 75]
  assert list(first["ranges"]) == ["0-39", "40-99"]
  assert capsys.readouterr().out.strip().splitlines()[-1].startswith("bound ")
  # The batch size changes nothing; the seed draws other x_t; a single run's default ranges
  # are T/4 and 3T/4.
  whole_batch = report("--ranges", "40", "--batch-size", "5", "--seed", "1")
  np.testing.assert_allclose(list(whole_batch["per_t"].values()), list(first["per_t"].values()),
                             rtol=1e-5)
  other_seed = report("--seed", "2")
  assert list(other_seed["ranges"]) == ["0-24", "25-74", "75-99"]
  assert other_seed["per_t"]["50"][0] != pytest.approx(first["per_t"]["50"][0])
  with pytest.raises(SystemExit, match="--ranges '0,7'"):
    report("--ranges", "0,7")
  with pytest.raises(SystemExit, match="No denoiser checkpoint"):
    evaluate.main(["bound", "--workdir", str(tmp_path / "none"), "--out", str(tmp_path)])
  with pytest.raises(SystemExit, match="--num-examples must be >= 2"):
    evaluate.main(["bound", "--workdir", tiny_run, "--out", str(tmp_path), "--num-examples", "1"])
