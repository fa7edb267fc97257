"""The flags of ``python -m vqd_jax.bench`` and ``python -m vqd_jax.data.convert_folder``: each
one's effect, checked against what the command builds, runs, prints or writes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time

import jax
import numpy as np
import pytest

from cli_coverage import covers
import test_data_helpers as helpers
from vqd_jax import configs_io
from vqd_jax.benchmarks import chaos
from vqd_jax.benchmarks import common
from vqd_jax.benchmarks import memory
from vqd_jax.benchmarks import models
from vqd_jax.benchmarks import models_rows
from vqd_jax.benchmarks import sampler
from vqd_jax.benchmarks import suite
from vqd_jax.benchmarks import train
from vqd_jax.data import convert_folder


def _last_json(text: str) -> dict:
  return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


# -- bench train ---------------------------------------------------------------------------------


@covers("bench train --steps")
def test_bench_train_times_the_steps_asked_for(monkeypatch, capsys):
  calls = []
  real_step = common.compiled_step

  def compiled_step(task, mesh, rules):
    step, *rest = real_step(task, mesh, rules)

    class Lowered:
      def __init__(self, lowered):
        self.lowered = lowered

      def compile(self):
        compiled = self.lowered.compile()

        class Counting:
          def __call__(self, *args):
            calls.append(1)
            return compiled(*args)

          def cost_analysis(self):
            return compiled.cost_analysis()
        return Counting()

    class Step:
      def lower(self, *args):
        return Lowered(step.lower(*args))
    return (Step(), *rest)

  monkeypatch.setattr(common, "compiled_step", compiled_step)
  monkeypatch.setattr(train, "device_peak", lambda: (1e12, "test"))
  assert train.main(["--config", "configs/diffusion.py:tiny", "--vqvae-config",
                     "configs/vqvae.py:tiny", "--steps", "3"]) == 0
  assert _last_json(capsys.readouterr().out)["steps_per_s"] > 0
  # "--steps 3": one warm-up step, then three timed ones.
  assert len(calls) == 1 + 3


# -- bench models --------------------------------------------------------------------------------


@covers("bench models --vqd-steps", "bench models --ctf-codes", "bench models --clusters",
        "bench models --guidance", "bench models --full", "bench models --out")
def test_bench_models_rows_follow_the_flags(monkeypatch, capsys, tmp_path):
  rows_of_calls = []
  real_call = models_rows.denoiser_call

  def denoiser_call(model, params, rows, *args, **kwargs):
    rows_of_calls.append((rows, kwargs["batch"]))
    return real_call(model, params, rows, *args, **kwargs)

  monkeypatch.setattr(models_rows, "denoiser_call", denoiser_call)
  out = tmp_path / "rows" / "models.jsonl"
  assert models.main(["--scale", "tiny", "--batch-sizes", "1", "--vqd-steps", "2",
                      "--ctf-codes", "24", "--clusters", "2", "--guidance", "1.0", "--full",
                      "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  rows = _last_json(printed)["rows"]
  by = {r["method"]: r for r in rows}
  # "--vqd-steps 2" (also CTF-VQD's coarse steps), "--ctf-codes 24", "--clusters 2".
  assert set(by) == {"VQD 2 steps K=16", "AR cached K=16", "AR uncached K=16", "AR cached K=24",
                     "CTF K=24 C=2", "CTF-VQD 2 steps K=24 C=2"}
  assert by["VQD 2 steps K=16"]["calls"] == "2 x denoiser step"
  assert by["CTF-VQD 2 steps K=24 C=2"]["calls"].startswith("2 x denoiser step")
  # "--guidance 1.0" turns guidance off: every denoiser call runs the batch's rows only (guided
  # calls run twice as many).
  assert rows_of_calls and all(r == batch == 1 for r, batch in rows_of_calls)
  # "--full": the VQD and AR rows are timed through their whole token sampler, the CTF ones
  # (no whole sampler at this scale) extrapolated.
  timing = {m: r["timing"] for m, r in by.items()}
  assert {m for m, t in timing.items() if t == "whole token sampler"} == {
      "VQD 2 steps K=16", "AR cached K=16", "AR uncached K=16"}
  # After each row and before each whole sampler runs, the rows as they stand: a run stopped
  # there keeps them.
  partial = [json.loads(line)["rows"] for line in printed.splitlines()
             if line.startswith("{") and '"partial": true' in line]
  assert [len(p) for p in partial] == [1, 2, 3, 4, 5, 6, 6, 6, 6]
  assert [sum(r["timing"] == "whole token sampler" for r in p) for p in partial[5:]] == [
      0, 0, 1, 2]
  assert [r["method"] for r in partial[-1]] == [r["method"] for r in rows]
  # "--out": the same rows as JSON lines.
  assert [json.loads(line) for line in out.read_text().splitlines()] == rows



@covers("bench models --trained")
def test_bench_models_times_the_runs_a_quickstart_trained(tiny_run, tmp_path, capsys):
  """A quickstart folder holding only its denoiser run (``diffusion/``) and its score: the VQD
  rows time that run's own pipeline (its parameter count) and carry the score with its binomial
  standard error; the families not trained there are named and skipped."""
  from vqd_jax.inference import VQDiffusionPipeline  # pylint: disable=import-outside-toplevel
  quickstart = tmp_path / "quickstart"
  quickstart.mkdir()
  os.symlink(tiny_run, quickstart / "diffusion")
  (quickstart / "quickstart.json").write_text(
      json.dumps({"score": {"score": 0.5, "num_samples": 100}}))
  # 4 steps: the tiny run's own sampler, the setting its score was measured with.
  assert models.main(["--trained", str(quickstart), "--batch-sizes", "1",
                      "--vqd-steps", "4"]) == 0
  out = capsys.readouterr().out
  rows = _last_json(out)["rows"]
  assert [r["method"] for r in rows] == ["VQD 4 steps"]
  assert (rows[0]["shapes_score"], rows[0]["score_se"]) == (0.5, pytest.approx(0.05))
  params = VQDiffusionPipeline.from_run(tiny_run).params["transformer"]
  assert rows[0]["params"] == sum(x.size for x in jax.tree_util.tree_leaves(params))
  for name in ("AR", "CTF"):
    assert f"{name}: not trained in {quickstart}" in out


# -- bench sampler -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampler_run():
  """One tiny ``bench sampler`` run with spies on what it builds and times."""
  seen = {"sample": [], "keys": [], "widths": [], "repeats": [], "experts": []}
  patch = pytest.MonkeyPatch()
  # pylint: disable=protected-access
  real_sample, real_make = sampler.sample, sampler._make_denoiser
  real_best, real_ensemble = sampler._best_time, sampler._ensemble
  # pylint: enable=protected-access

  def sample(denoise, key, process, **kwargs):
    seen["sample"].append(dict(kwargs, num_classes=process.num_classes,
                               num_timesteps=process.num_timesteps, schedule=process.schedule))
    return real_sample(denoise, key, process, **kwargs)

  def make(kind, num_classes, num_timesteps, width, key):
    seen["keys"].append((str(jax.random.key_impl(key)), np.asarray(jax.random.key_data(key))))
    params, denoise = real_make(kind, num_classes, num_timesteps, width, key)
    seen["widths"].append(params["tokens"].shape)
    return params, denoise

  def best(fn, repeats):
    calls = []
    seconds = real_best(lambda: calls.append(1) or fn(), repeats)
    seen["repeats"].append(len(calls))
    return seconds

  def ensemble(denoise, params, num_experts, num_timesteps):
    ens, routed = real_ensemble(denoise, params, num_experts, num_timesteps)
    seen["experts"].append(jax.tree.leaves(ens.stacked)[0].shape[0])
    return ens, routed

  patch.setattr(sampler, "sample", sample)
  patch.setattr(sampler, "_make_denoiser", make)
  patch.setattr(sampler, "_best_time", best)
  patch.setattr(sampler, "_ensemble", ensemble)
  out = io.StringIO()
  try:
    with contextlib.redirect_stdout(out):
      code = sampler.main(["--num-classes", "8", "--num-tokens", "4", "--batch-size", "3",
                           "--num-steps", "2", "--num-timesteps", "5", "--schedule", "paper",
                           "--width", "6", "--denoisers", "matmul", "--guidance-scale", "2.0",
                           "--truncation-rate", "0.5", "--purity-weight", "0.3",
                           "--experts", "2", "--repeats", "2", "--seed", "7",
                           "--prng-impl", "rbg"])
  finally:
    patch.undo()
  assert code == 0
  return seen, _last_json(out.getvalue())


@covers("bench sampler --num-classes", "bench sampler --num-tokens", "bench sampler --batch-size",
        "bench sampler --num-steps", "bench sampler --num-timesteps", "bench sampler --schedule",
        "bench sampler --guidance-scale", "bench sampler --truncation-rate",
        "bench sampler --purity-weight")
def test_bench_sampler_runs_the_sampler_it_was_asked_for(sampler_run):
  # Every sampler program the benchmark compiles gets the process and settings of the flags:
  # --num-classes 8 --num-tokens 4 --batch-size 3 --num-steps 2 --num-timesteps 5 --schedule paper
  # --guidance-scale 2.0 --truncation-rate 0.5 --purity-weight 0.3.
  seen, _ = sampler_run
  assert seen["sample"] and all(s == dict(
      batch_size=3, num_tokens=4, num_steps=2, truncation_rate=0.5, guidance_scale=2.0,
      purity_weight=0.3, num_classes=8, num_timesteps=5, schedule="paper")
      for s in seen["sample"]), seen["sample"]


@covers("bench sampler --width", "bench sampler --denoisers", "bench sampler --experts",
        "bench sampler --repeats", "bench sampler --seed", "bench sampler --prng-impl")
def test_bench_sampler_builds_and_times_the_denoisers_asked_for(sampler_run):
  seen, report = sampler_run
  # "--denoisers matmul": only the matmul denoiser, with "--width" 6 hidden units over K+1 tokens.
  assert [r["denoiser"] for r in report["results"]] == ["matmul"]
  assert set(seen["widths"]) == {(9, 6)}
  # "--experts 2": an ensemble of two stacked experts is timed against the single denoiser.
  assert seen["experts"] == [2] and [e["experts"] for e in report["experts"]] == [2]
  # "--repeats 2": every timing runs its compiled program twice.
  assert seen["repeats"] and set(seen["repeats"]) == {2}
  # "--seed 7 --prng-impl rbg": the denoiser weights come from jax.random.key(7, impl="rbg").
  want = np.asarray(jax.random.key_data(jax.random.key(7, impl="rbg")))
  assert seen["keys"] and all("rbg" in impl and np.array_equal(data, want)
                              for impl, data in seen["keys"])


# -- bench chaos ---------------------------------------------------------------------------------


def _chaos(monkeypatch, tmp_path, *argv):
  """``bench chaos`` with training processes replaced by a fake: the commands and kill delays."""
  calls = []

  def run(command, log_path, delay):
    workdir = command[command.index("--workdir") + 1]
    os.makedirs(workdir, exist_ok=True)
    calls.append((command, delay))
    if delay is None:
      return chaos.Outcome(0, "finished", 10.0, 4.0)
    return chaos.Outcome(None, "training", delay, None)

  monkeypatch.setattr(chaos, "_run", run)
  monkeypatch.setattr(chaos, "_compare", lambda reference, killed: [])
  assert chaos.main(list(argv)) == 0
  return calls


@covers("bench chaos --config", "bench chaos --kills", "bench chaos --steps", "bench chaos --seed",
        "bench chaos --workdir", "bench chaos overrides")
def test_bench_chaos_trains_and_kills_as_asked(monkeypatch, tmp_path, capsys):
  workdir = str(tmp_path / "chaos")
  argv = ["--config", "configs/vqvae.py:tiny", "--workdir", workdir, "--kills", "3",
          "--steps", "6", "--seed", "1", "--config.train.batch_size=2"]
  calls = _chaos(monkeypatch, tmp_path, *argv)
  assert "kills survived: 3 of 3 sent" in capsys.readouterr().out
  # "--kills 3": three killed attempts between the reference runs and the last, unkilled one.
  delays = [d for _, d in calls]
  assert delays[:2] == [None, None] and delays[-1] is None and len(delays) == 6
  for command, _ in calls:
    # "--config", "--steps" and the overrides reach every training process; each trains under
    # "--workdir" (reference/ or chaos/).
    assert command[command.index("--config") + 1] == "configs/vqvae.py:tiny"
    assert "--config.train.num_steps=6" in command and command[-1] == "--config.train.batch_size=2"
    assert command[command.index("--workdir") + 1] in (os.path.join(workdir, "reference"),
                                                       os.path.join(workdir, "chaos"))
  # "--seed": the same seed draws the same kill delays, another seed others.
  again = [d for _, d in _chaos(monkeypatch, tmp_path, *argv)]
  other = [d for _, d in _chaos(monkeypatch, tmp_path, *argv[:-3], "--seed", "2")]
  assert again == delays and other[2:-1] != delays[2:-1]


# -- bench suite ---------------------------------------------------------------------------------


@covers("bench suite --quick", "bench suite --only", "bench suite --out")
def test_bench_suite_runs_the_selected_benchmarks_at_the_sizes_asked_for(monkeypatch, tmp_path):
  ran = []
  monkeypatch.setattr(suite, "run_one",
                      lambda command, limit: (ran.append(command[3:]), (0, '{"x": 1}', 0.5))[1])
  # An accelerator's backend: without "--quick" the full sizes run, with it the small ones.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert suite.main(["--only", "sampler", "--out", str(tmp_path / "full")]) == 0
  assert suite.main(["--quick", "--only", "train step", "--out", str(tmp_path / "quick")]) == 0
  by_name = {b.name: b for b in suite.SUITE}
  sampler_name = next(n for n in by_name if "sampler" in n)
  train_names = [n for n in by_name if "train step" in n]
  assert len(train_names) == 2
  assert ran == [list(by_name[sampler_name].full)] + [list(by_name[n].quick) for n in train_names]
  full = json.loads((tmp_path / "full" / "suite.json").read_text())
  quick = json.loads((tmp_path / "quick" / "suite.json").read_text())
  assert (full["quick"], quick["quick"]) == (False, True)
  assert [b["name"] for b in full["benchmarks"]] == [sampler_name]
  assert [b["name"] for b in quick["benchmarks"]] == train_names
  assert quick["benchmarks"][0]["result"] == {"x": 1}


@covers("bench suite --budget")
def test_bench_suite_shares_its_budget_and_stops_what_runs_past_its_part(monkeypatch, tmp_path):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  shares = [b.share_s for b in suite.SUITE]
  # Each benchmark takes 10 s, except the B train step, which runs past any limit it is given.
  taken, limits, written = [], [], []

  def fake(command, limit):
    limits.append(limit)
    if suite.os.path.exists(tmp_path / "suite.json"):
      written.append(len(json.loads((tmp_path / "suite.json").read_text())["benchmarks"]))
    if "configs/diffusion.py:B" in command:
      taken.append(limit)
      return None, 'compiling...\n{"rows": [1], "partial": true}\nstill compiling\n', limit
    taken.append(10.0)
    return 0, '{"x": 1}', 10.0

  monkeypatch.setattr(suite, "run_one", fake)
  assert suite.main(["--budget", "200", "--out", str(tmp_path)]) == 1
  # Closed form: each gets its share of what the ones before it left.
  for i, limit in enumerate(limits):
    assert limit == pytest.approx((200 - sum(taken[:i])) * shares[i] / sum(shares[i:]))
  assert sum(taken) <= 200 + 1e-9
  report = json.loads((tmp_path / "suite.json").read_text())
  assert written == list(range(1, len(suite.SUITE)))  # rewritten after every benchmark
  stopped = [b for b in report["benchmarks"] if not b["ok"]]
  assert [b["name"] for b in stopped] == [b.name for b in suite.SUITE if "B bf16" in b.name]
  # It is reported as stopped, with the last figures it printed.
  assert stopped[0]["stopped"] and "stopped after" in stopped[0]["error"]
  assert not any(b["stopped"] for b in report["benchmarks"] if b["ok"])
  assert stopped[0]["result"] == {"rows": [1], "partial": True}
  assert report["budget_s"] == 200
  # The default on an accelerator is the sum of the shares; --budget 0 and --quick have none.
  limits.clear(), taken.clear()
  suite.main(["--only", "sampler"])
  assert limits == [pytest.approx(suite.DEFAULT_BUDGET_S)] and suite.DEFAULT_BUDGET_S <= 360
  limits.clear()
  suite.main(["--only", "sampler", "--budget", "0"])
  suite.main(["--only", "sampler", "--quick"])
  assert limits == [None, None]


@pytest.mark.parametrize("budget", ["-5", "nan", "inf"])
def test_bench_suite_refuses_a_budget_that_is_not_seconds(budget, capsys):
  with pytest.raises(SystemExit) as exit_info:
    suite.main(["--budget", budget])
  assert exit_info.value.code == 2
  assert f"--budget is the suite's seconds (0 for no limit), got {float(budget)}" in (
      capsys.readouterr().err)


def test_bench_suite_stops_a_benchmark_with_every_process_it_started(tmp_path):
  pid_file = tmp_path / "child.pid"
  script = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "print('started', flush=True)\n"
            "time.sleep(120)\n")
  code, output, seconds = suite.run_one([sys.executable, "-c", script], limit_s=3)
  assert code is None and "started" in output and seconds < 60
  child = int(pid_file.read_text())
  for _ in range(100):
    if not chaos.running(child):  # killed: gone, or a zombie until it is reaped
      break
    time.sleep(0.05)
  else:
    raise AssertionError("the benchmark's own subprocess outlived the stop")
  assert suite.run_one([sys.executable, "-c", "print('{\"a\": 1}')"], 30)[:2] == (0, '{"a": 1}\n')


# -- bench memory --------------------------------------------------------------------------------


def _memory(capsys, *argv) -> dict:
  assert memory.main(list(argv)) == 0
  return _last_json("{" + capsys.readouterr().out.split("{", 1)[1].replace("\n", ""))


@covers("bench memory --no-compile", "bench memory --vqvae-config")
def test_bench_memory_layout_only_and_the_autoencoder_it_is_given(capsys):
  base = ["--config", "configs/diffusion.py:tiny", "--mesh", "data=1", "--no-compile"]
  tiny = _memory(capsys, *base, "--vqvae-config", "configs/vqvae.py:tiny")
  shapes = _memory(capsys, *base)  # default for 32px images: configs/vqvae.py:shapes
  # "--no-compile": the state's layout only, no compiler memory analysis.
  assert "params_bytes_total" in tiny and "argument_size_in_bytes" not in tiny
  # The denoiser predicts one of the autoencoder's codes (+ the mask): its output layer and token
  # table grow with the codebook, 32 codes in the tiny autoencoder, 128 in the shapes one.
  codes = [configs_io.load_config(f"configs/vqvae.py:{p}").model.num_vq_embeddings
           for p in ("tiny", "shapes")]
  assert codes[0] < codes[1] and tiny["params_bytes_total"] < shapes["params_bytes_total"]


# -- bench sample --------------------------------------------------------------------------------


TINY_PIPELINE = ["--num-layers", "1", "--num-heads", "2", "--head-dim", "8", "--num-codes", "16",
                 "--token-side", "4", "--text-width", "32", "--text-layers", "1",
                 "--text-heads", "2", "--vq-channels", "32,64", "--vq-layers-per-block", "1"]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
  """One tiny ``bench sample`` run with every pipeline call recorded."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  from vqd_jax.benchmarks import sample_vs_diffusers  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference import VQDiffusionPipeline  # pylint: disable=import-outside-toplevel
  calls = {"vqd_jax": [], "diffusers": []}
  patch = pytest.MonkeyPatch()
  ours, theirs = VQDiffusionPipeline.__call__, diffusers.VQDiffusionPipeline.__call__

  def record(name, real):
    def call(self, prompts, *args, **kwargs):
      calls[name].append((len(prompts), {k: kwargs[k] for k in (
          "num_inference_steps", "guidance_scale", "truncation_rate")}))
      return real(self, prompts, *args, **kwargs)
    return call

  patch.setattr(VQDiffusionPipeline, "__call__", record("vqd_jax", ours))
  patch.setattr(diffusers.VQDiffusionPipeline, "__call__", record("diffusers", theirs))
  folder = tmp_path_factory.mktemp("bench_sample") / "pipeline"
  threads = torch.get_num_threads()
  out = io.StringIO()
  try:
    with contextlib.redirect_stdout(out):
      code = sample_vs_diffusers.main(
          ["--preset", "S", *TINY_PIPELINE, "--steps", "2", "--batch-size", "3",
           "--guidance", "3.0", "--truncation", "0.8", "--repeats", "2", "--threads", "1",
           "--folder", str(folder)])
  finally:
    patch.undo()
    torch.set_num_threads(threads)
  assert code == 0
  return folder, calls, _last_json(out.getvalue())


def _config(folder, part):
  return json.loads((folder / part / "config.json").read_text())


@covers("bench sample --folder", "bench sample --num-layers", "bench sample --num-heads",
        "bench sample --head-dim", "bench sample --num-codes", "bench sample --token-side",
        "bench sample --text-width", "bench sample --text-layers", "bench sample --text-heads",
        "bench sample --vq-channels", "bench sample --vq-layers-per-block")
def test_bench_sample_saves_the_pipeline_of_the_size_flags(sample_run):
  # "--folder": the random checkpoint is written there, at the sizes of the flags (TINY_PIPELINE:
  # --num-layers 1 --num-heads 2 --head-dim 8 --num-codes 16 --token-side 4 --text-width 32
  # --text-layers 1 --text-heads 2 --vq-channels 32,64 --vq-layers-per-block 1), each overriding
  # the "--preset S" field.
  folder = sample_run[0]
  transformer = _config(folder, "transformer")
  assert (transformer["num_layers"], transformer["num_attention_heads"],
          transformer["attention_head_dim"], transformer["num_vector_embeds"],
          transformer["sample_size"]) == (1, 2, 8, 16 + 1, 4)
  text = _config(folder, "text_encoder")
  assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]) == (32, 1, 2)
  vq = _config(folder, "vqvae")
  assert (vq["block_out_channels"], vq["layers_per_block"], vq["num_vq_embeddings"]) == (
      [32, 64], 1, 16)


@covers("bench sample --steps", "bench sample --batch-size", "bench sample --guidance",
        "bench sample --truncation", "bench sample --repeats", "bench sample --threads")
def test_bench_sample_times_both_pipelines_as_asked(sample_run):
  _, calls, report = sample_run
  settings = {"num_inference_steps": 2, "guidance_scale": 3.0, "truncation_rate": 0.8}
  # "--batch-size 3" prompts per call, "--steps 2", "--guidance 3.0", "--truncation 0.8" in both
  # pipelines; "--repeats 2" timed calls of each after one warm-up (vqd_jax's also compiles).
  assert calls["vqd_jax"] == [(3, settings)] * 3 and calls["diffusers"] == [(3, settings)] * 3
  assert report["diffusers_images_per_s"] > 0 and report["vqd_jax_images_per_s"] > 0
  # "--threads 1": torch ran on one intra-op thread.
  assert report["torch_threads"] == 1


@covers("bench sample --torch-device")
def test_bench_sample_puts_diffusers_on_the_torch_device_asked_for(tmp_path):
  torch = pytest.importorskip("torch")
  if torch.cuda.is_available():
    pytest.skip("checks the failure to place diffusers on a CUDA device this machine lacks")
  from vqd_jax.benchmarks import sample_vs_diffusers  # pylint: disable=import-outside-toplevel
  # "--torch-device cuda" moves the diffusers pipeline there: without CUDA, torch refuses.
  with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
    sample_vs_diffusers.main(["--preset", "small", *TINY_PIPELINE, "--torch-device", "cuda",
                              "--folder", str(tmp_path / "pipeline")])


# -- data.convert_folder -------------------------------------------------------------------------


@covers("data.convert_folder --split", "data.convert_folder --caption-template",
        "data.convert_folder --overwrite")
def test_convert_folder_split_template_and_overwrite(tmp_path, capsys):
  from vqd_jax import data  # pylint: disable=import-outside-toplevel
  helpers.make_class_folder(tmp_path / "a", per_class=1)
  helpers.make_class_folder(tmp_path / "b", per_class=2)
  out = str(tmp_path / "tfds")
  argv = ["--input", str(tmp_path / "a"), "--split", "validation", "--output", out,
          "--name", "pets", "--image-size", "8", "--caption-template", "{} in the wild"]
  assert convert_folder.main(argv) == 0
  # "--split validation": the examples land in that split; "--caption-template" makes captions.
  src = data.TfdsSource("pets", data_dir=out, split="validation")
  assert len(src) == 2
  assert sorted(data.iter_captions(src)) == ["green frog in the wild", "red fox in the wild"]
  # Writing the same dataset again is refused, unless "--overwrite" (which replaces it).
  argv[1] = str(tmp_path / "b")
  with pytest.raises(SystemExit, match="already exists"):
    convert_folder.main(argv)
  capsys.readouterr()
  assert convert_folder.main(argv + ["--overwrite"]) == 0
  assert "validation: " in capsys.readouterr().out
  assert len(data.TfdsSource("pets", data_dir=out, split="validation")) == 4
