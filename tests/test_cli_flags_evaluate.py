"""Effects of the flags of ``python -m vqd_jax.evaluate`` that the metric tests do not assert.

Where what a flag changes is which images reach the network, in which batches, with which seed
or where the report goes, the FID Inception is replaced by a stand-in of fixed random projections
of the pixels, and the expected figures are computed here from the images on disk with the
library's metric functions. ``evaluate all`` and ``paint`` sample the tiny trained shapes run
for real; ``variations`` (which needs a run with an image source) runs on the stand-in pipeline
of test_variations.
"""

import contextlib
import io
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from cli_coverage import covers
from test_evaluate_cli import write_samples
from test_variations import CopyingPipeline
from vqd_jax import evaluate
from vqd_jax.evaluation import fid, inception, inception_cli
from vqd_jax.evaluation import paint as paint_eval
from vqd_jax.evaluation import shapes as shapes_eval
from vqd_jax.evaluation.variations import references

SIDE, NUM_IMAGES = 32, 6


class StubInception:
  """Stands in for the FID Inception: pool = pixels @ fixed random matrix, logits from the pool;
  records the path it was loaded from and the size of every batch it is given."""

  def __init__(self, path):
    rng = np.random.default_rng(0)
    self.path, self.batches = path, []
    self.pool_weights = rng.normal(size=(SIDE * SIDE * 3, 8)) / 50
    self.logit_weights = rng.normal(size=(8, 10))
    self.params = {"fc": {"bias": rng.normal(size=10)}}

  def features(self, images):
    self.batches.append(len(images))
    return self.library_features(np.asarray(images))

  def library_features(self, images):
    pool = images.reshape(len(images), -1) / 255 @ self.pool_weights
    return (pool.astype(np.float32),
            (pool @ self.logit_weights + self.params["fc"]["bias"]).astype(np.float32))


@pytest.fixture
def stub(monkeypatch):
  """``evaluate``'s Inception loader patched to build a ``StubInception``; the models built."""
  built = []

  def load(path):
    built.append(StubInception(path))
    return built[-1]
  monkeypatch.setattr(inception, "load_inception", load)
  return built


def write_folder(folder, seed, count=NUM_IMAGES):
  """``count`` random 32x32 PNGs in ``folder``; their uint8 arrays in file order."""
  folder.mkdir(parents=True)
  images = np.random.default_rng(seed).integers(0, 256, (count, SIDE, SIDE, 3), np.uint8)
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f"{i:02d}.png")
  return images


def read_samples(folder):
  """uint8 ``[N, H, W, 3]`` of the images ``folder/samples.jsonl`` lists, and its records."""
  records = shapes_eval.load_samples(str(folder))
  return np.stack([np.asarray(Image.open(folder / r["file"]).convert("RGB"))
                   for r in records]), records


def main(argv):
  """``evaluate.main(argv)`` -> (exit code, stdout, stderr)."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = evaluate.main(argv)
  return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------- shapes

@covers("evaluate shapes --show-failures")
def test_shapes_show_failures_prints_that_many_failing_samples(tmp_path, capsys):
  write_samples(tmp_path, n_right=2, n_wrong=3)  # samples 2, 3 and 4 are wrong
  for n, want in (("2", ["img/002.png", "img/003.png"]), ("0", [])):
    assert evaluate.main(["shapes", "--samples", str(tmp_path), "--show-failures", n]) == 0
    wrong = [line.split()[1] for line in capsys.readouterr().out.splitlines()
             if line.startswith("  wrong: ")]
    assert wrong == want


# ---------------------------------------------------------------------------- fid, kid and is

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("stub_folders")
  return root, write_folder(root / "samples", 0), write_folder(root / "reference", 1)


@covers("evaluate fid --batch-size", "evaluate fid --no-progress")
def test_fid_batches_and_progress_bar(folders, stub):
  root, samples, reference = folders
  flags = ["fid", "--samples", str(root / "samples"), "--reference", str(root / "reference"),
           "--inception", "stub.pth"]
  _, printed, err = main([*flags, "--batch-size", "4", "--output", str(root / "fid4.json")])
  # 6 images per folder in batches of 4, the last padded to 4 (one compiled shape).
  assert stub[0].batches == [4, 4, 4, 4] and "samples: 100%" in err
  _, _, quiet = main([*flags, "--batch-size", "6", "--no-progress"])
  assert stub[1].batches == [6, 6] and "100%" not in quiet
  pools = [stub[0].library_features(x)[0] for x in (samples, reference)]
  want = fid.frechet_distance(*fid.statistics(pools[0]), *fid.statistics(pools[1]))
  for report in ("fid4.json", "samples/fid.json"):
    assert json.loads((root / report).read_text())["fid"] == pytest.approx(want, rel=1e-6)
  assert printed.splitlines()[-1] == f"fid {want:.4f}"


@covers("evaluate kid --batch-size", "evaluate kid --no-progress", "evaluate kid --output",
        "evaluate kid --save-reference-features")
def test_kid_saves_reference_features_and_writes_its_report(folders, stub, tmp_path):
  root, samples, reference = folders
  saved, output = tmp_path / "ref_features.npz", tmp_path / "kid_report.json"
  flags = ["--samples", str(root / "samples"), "--inception", "stub.pth", "--num-subsets", "3",
           "--subset-size", "4"]
  _, _, err = main(["kid", *flags, "--reference", str(root / "reference"), "--batch-size", "5",
                    "--no-progress", "--save-reference-features", str(saved),
                    "--output", str(output)])
  assert stub[0].batches == [5, 5, 5, 5] and "100%" not in err
  pools = [stub[0].library_features(x)[0] for x in (samples, reference)]
  np.testing.assert_allclose(fid.load_features(saved), pools[1], rtol=1e-6)
  report = json.loads(output.read_text())
  want = fid.kernel_inception_distance(pools[0], pools[1], 3, 4, seed=0)
  assert (report["kid"], report["kid_std"]) == pytest.approx(want, rel=1e-5)
  assert report["reference_features"] == str(saved)
  assert not (root / "samples" / "kid.json").exists()
  # The saved features stand for the reference folder.
  _, _, err = main(["kid", *flags, "--reference", str(saved), "--output", str(tmp_path / "b")])
  assert json.loads((tmp_path / "b").read_text())["kid"] == report["kid"]
  assert "samples: 100%" in err and stub[1].batches == [6]  # default --batch-size 50, progress


@covers("evaluate is --seed", "evaluate is --no-shuffle", "evaluate is --output",
        "evaluate is --batch-size", "evaluate is --no-progress")
def test_is_shuffle_seed_output_batches_and_progress(folders, stub, tmp_path):
  root, samples, _ = folders
  flags = ["is", "--samples", str(root / "samples"), "--inception", "stub.pth", "--splits", "2"]
  _, _, err = main([*flags, "--seed", "5", "--output", str(tmp_path / "seed5.json"),
                    "--batch-size", "4", "--no-progress"])
  assert stub[0].batches == [4, 4] and "100%" not in err
  main([*flags, "--seed", "6", "--output", str(tmp_path / "seed6.json")])
  _, _, err = main([*flags, "--no-shuffle", "--output", str(tmp_path / "ordered.json")])
  assert "samples: 100%" in err
  logits = stub[0].library_features(samples)[1] - stub[0].params["fc"]["bias"]
  for name, seed in (("seed5", 5), ("seed6", 6), ("ordered", None)):
    report = json.loads((tmp_path / f"{name}.json").read_text())
    want = fid.inception_score(logits, 2, shuffle_seed=seed)
    assert (report["is"], report["is_std"]) == pytest.approx(want, rel=1e-6)
    assert report["shuffle_seed"] == seed
  assert len({json.loads((tmp_path / f"{n}.json").read_text())["is"]
              for n in ("seed5", "seed6", "ordered")}) == 3  # the shuffle changes the splits


# -------------------------------------------------------------------------------------- all

@pytest.fixture(scope="module")
def evaluate_all(tiny_run, tmp_path_factory):
  """``(root, run)``: ``run(argv)`` runs ``evaluate all argv`` with the stand-in Inception (once
  per distinct argv: tests share runs) -> its --out folder, metrics.json, stderr and model."""
  root, runs = tmp_path_factory.mktemp("evaluate_all_flags"), {}

  def run(argv):
    if tuple(argv) not in runs:
      with pytest.MonkeyPatch.context() as patch:
        built = []
        patch.setattr(inception, "load_inception",
                      lambda path: built.append(StubInception(path)) or built[-1])
        code, _, err = main(["all", *argv])
      assert code == 0
      out = root / argv[argv.index("--out") + 1]
      runs[tuple(argv)] = dict(out=out, err=err, model=built[-1],
                               metrics=json.loads((out / "metrics.json").read_text()))
    return runs[tuple(argv)]
  return root, run


def all_argv(root, tiny_run, name, *flags):
  """The flags of the first test's run of ``evaluate all``, out to ``root/name``, and ``flags``."""
  return ["--workdir", tiny_run, "--out", str(root / name), "--num-samples", "3",
          "--batch-size", "2", "--steps", "2", "--inception", "stub.pth", "--splits", "3", *flags]


@covers("evaluate all --workdir", "evaluate all --out", "evaluate all --num-samples",
        "evaluate all --batch-size", "evaluate all --steps", "evaluate all --inception",
        "evaluate all --splits")
def test_all_samples_n_held_out_captions_in_batches(evaluate_all, tiny_run):
  root, run_all = evaluate_all
  run = run_all(["--workdir", tiny_run, "--out", str(root / "a"), "--num-samples", "3",
                 "--batch-size", "2", "--steps", "2", "--inception", "stub.pth", "--splits", "3",
                 "--seed", "1"])
  assert run["out"] == root / "a"
  images, records = read_samples(run["out"] / "samples")
  assert [r["prompt"] for r in records] == shapes_eval.heldout_prompts(3, SIDE)
  assert images.shape == (3, SIDE, SIDE, 3)
  metrics = run["metrics"]
  assert metrics["workdir"] == tiny_run and metrics["sampling"]["checkpoint_step"] == 4
  assert metrics["num_samples"] == 3 and metrics["batch_size"] == 2
  assert metrics["sampling"]["num_steps"] == 2 and records[0]["num_steps"] == 2
  assert metrics["inception"] == os.path.abspath("stub.pth") and run["model"].path == "stub.pth"
  # 3 samples and 3 references, each in a batch of 2 and a padded one.
  assert run["model"].batches == [2, 2, 2, 2]
  logits = run["model"].library_features(images)[1]
  want = inception_cli.is_of(run["model"], logits, 3, 2020)
  row = metrics["metrics"]["is"]
  assert (row["value"], row["error"]) == pytest.approx(want) and row["error_kind"] == (
      "std over 3 splits")
  assert (run["out"] / "reference" / "samples.jsonl").is_file()


@covers("evaluate all --seed", "evaluate all --reference", "evaluate all --no-progress")
def test_all_seed_reference_folder_and_progress(evaluate_all, tiny_run):
  root, run = evaluate_all
  a = run(all_argv(root, tiny_run, "a", "--seed", "1"))
  b = run(all_argv(root, tiny_run, "b", "--seed", "2", "--no-progress",
                   "--reference", str(a["out"] / "samples")))
  a_images, _ = read_samples(a["out"] / "samples")
  b_images, b_records = read_samples(b["out"] / "samples")
  assert a["metrics"]["seed"] == 1 and b["metrics"]["sampling"]["seed"] == 2
  assert b_records[0]["seed"] == 2 and not np.array_equal(a_images, b_images)
  assert b["metrics"]["reference"] == str(a["out"] / "samples")
  assert not (b["out"] / "reference").exists()  # the folder given is the reference
  pools = [b["model"].library_features(x)[0] for x in (b_images, a_images)]
  want = fid.frechet_distance(*fid.statistics(pools[0]), *fid.statistics(pools[1]))
  assert b["metrics"]["metrics"]["fid"]["value"] == pytest.approx(want, rel=1e-6)
  assert "inception samples: 100%" in a["err"] and "inception" not in b["err"]


@covers("evaluate all --no-ema", "evaluate all --step", "evaluate all --guidance",
        "evaluate all --truncation", "evaluate all --purity")
def test_all_sampling_flags_reach_the_sampler(evaluate_all, tiny_run):
  root, run = evaluate_all
  a = run(all_argv(root, tiny_run, "a", "--seed", "1"))
  raw = run(all_argv(root, tiny_run, "raw", "--seed", "1", "--no-ema"))
  # The run's EMA weights are not its raw weights: with the same seed the samples differ.
  assert not np.array_equal(read_samples(a["out"] / "samples")[0],
                            read_samples(raw["out"] / "samples")[0])
  settings = run(all_argv(root, tiny_run, "settings", "--seed", "1", "--step", "2",
                          "--guidance", "3", "--truncation", "0.9",
                          "--purity", "0.5"))["metrics"]["sampling"]
  assert (settings["checkpoint_step"], settings["guidance_scale"], settings["truncation_rate"],
          settings["purity_weight"], settings["num_steps"]) == (2, 3.0, 0.9, 0.5, 2)
  assert a["metrics"]["sampling"]["guidance_scale"] != 3.0


@covers("evaluate all --temperature", "evaluate all --top-k", "evaluate all --top-p",
        "evaluate all --no-cache", "evaluate all --coarse-workdir",
        "evaluate all --fine-temperature", "evaluate all --fine-top-k",
        "evaluate all --fine-guidance")
def test_all_passes_ar_and_ctf_sampling_flags_to_the_sampler(tiny_run, tmp_path, monkeypatch):
  # These need AR / coarse-to-fine runs; what ``all`` does with them is hand them to
  # ``python -m vqd_jax.sample`` (whose tests check their effect), so the argv it gets is checked.
  from vqd_jax import sample  # pylint: disable=import-outside-toplevel
  got = []

  class Stop(Exception):
    pass

  def fake_main(argv):
    got.append(sample.build_parser().parse_args(argv))
    raise Stop  # before the metrics
  monkeypatch.setattr(sample, "main", fake_main)
  with pytest.raises(Stop):
    evaluate.main(["all", "--workdir", tiny_run, "--out", str(tmp_path), "--num-samples", "2",
                   "--temperature", "0.7", "--top-k", "5", "--top-p", "0.8", "--no-cache",
                   "--coarse-workdir", "/runs/coarse", "--fine-temperature", "0.6",
                   "--fine-top-k", "7", "--fine-guidance", "1.5"])
  args = got[0]
  assert (args.temperature, args.top_k, args.top_p, args.no_cache) == (0.7, 5, 0.8, True)
  assert (args.coarse_workdir, args.fine_temperature, args.fine_top_k, args.fine_guidance) == (
      "/runs/coarse", 0.6, 7, 1.5)
  assert args.workdir == tiny_run and args.num_samples == 1  # one sample per caption


# ------------------------------------------------------------------------------------ paint

@covers("evaluate paint --workdir", "evaluate paint --out", "evaluate paint --weights",
        "evaluate paint --outside", "evaluate paint --unpainted-guidance",
        "evaluate paint --num-prompts", "evaluate paint --batch-size", "evaluate paint --seed")
def test_paint_samples_each_weight_with_the_seeded_boxes(tiny_run, tmp_path, monkeypatch):
  from vqd_jax.inference import VQDiffusionPipeline  # pylint: disable=import-outside-toplevel
  calls, generate = [], VQDiffusionPipeline.generate

  def recording(self, params, prompts, key, settings, **kw):
    calls.append(dict(prompts=list(prompts), key=np.asarray(jax.random.key_data(key)), **kw))
    return generate(self, params, prompts, key, settings, **kw)
  monkeypatch.setattr(VQDiffusionPipeline, "generate", recording)
  out = tmp_path / "paint"
  assert evaluate.main(["paint", "--workdir", tiny_run, "--out", str(out), "--num-prompts", "3",
                        "--batch-size", "2", "--weights", "2,1", "--outside", "0",
                        "--unpainted-guidance", "1.5", "--seed", "4"]) == 0
  report = json.loads((out / "paint_report.json").read_text())
  assert (out / "paint_grid.png").is_file()
  assert report["workdir"] == tiny_run and report["checkpoint_step"] == 4
  assert report["num_prompts"] == 3 and list(report["weights"]) == ["0.0", "1.0", "2.0"]
  assert report["paint_outside"] == 0.0 and report["unpainted_guidance"] == 1.5
  # Per weight two calls of 2 prompts (the last padded), keys folded from the seed.
  prompts = shapes_eval.heldout_prompts(3, SIDE)
  assert [c["paint_weight"] for c in calls] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
  assert all(c["paint_outside"] == 0.0 and c["unpainted_guidance"] == 1.5 for c in calls)
  assert [c["prompts"] for c in calls] == [prompts[:2], [prompts[2]] * 2] * 3
  for call, start in zip(calls, [0, 2] * 3):
    want = jax.random.key_data(jax.random.fold_in(jax.random.key(4), start))
    np.testing.assert_array_equal(call["key"], want)
  rng = np.random.default_rng(4)
  tasks = [paint_eval.make_task(p, rng, SIDE) for p in prompts]
  for got, task in zip(calls[0]["paint"], tasks):
    assert list(got) == list(task.boxes)
    for phrase, box in task.boxes.items():
      np.testing.assert_array_equal(got[phrase], paint_eval.box_mask(box, SIDE))


# ------------------------------------------------------------------------------- variations

class ImagePipeline(CopyingPipeline):
  """The stand-in pipeline as a run with a clip_image source; records each call's key."""
  embedders = {"clip_image": None}
  sampling_defaults = {}
  num_timesteps, checkpoint_step = 100, 7

  def __init__(self, workdir):
    super().__init__()
    self.workdir, self.keys = workdir, []

  def generate(self, params, prompts, key, settings, image=None, use_text=True):
    self.keys.append(np.asarray(jax.random.key_data(key)))
    return super().generate(params, prompts, key, settings, image=image, use_text=use_text)


@covers("evaluate variations --workdir", "evaluate variations --out",
        "evaluate variations --num-references", "evaluate variations --batch-size",
        "evaluate variations --seed")
def test_variations_references_batches_seed_and_outputs(tmp_path, monkeypatch):
  # A run with an image source is costly to train; the stand-in returns the reference itself,
  # so what the flags change (which references, which batches and keys, where) is checked.
  from vqd_jax.inference import VQDiffusionPipeline  # pylint: disable=import-outside-toplevel
  pipes = []
  monkeypatch.setattr(VQDiffusionPipeline, "from_run",
                      classmethod(lambda cls, workdir: pipes.append(ImagePipeline(workdir))
                                  or pipes[-1]))
  out = tmp_path / "variations"
  assert evaluate.main(["variations", "--workdir", "runs/images", "--out", str(out),
                        "--num-references", "5", "--batch-size", "2", "--seed", "3"]) == 0
  pipe = pipes[0]
  assert pipe.workdir == "runs/images"
  report = json.loads((out / "variations_report.json").read_text())
  assert report["num_references"] == 5 and report["workdir"] == "runs/images"
  assert report["checkpoint_step"] == 7 and (out / "variations_grid.png").is_file()
  refs, captions = references(5, SIDE)
  truth = np.mean([s.correct for s in shapes_eval.score_many(refs, captions)])
  assert report["image_only"]["reference_caption_score"][0] == pytest.approx(truth)
  assert {n for n, _, _ in pipe.calls} == {2}
  starts = [0, 2, 4] * 3  # image only, unconditional, text only: 3 calls of 2 each
  for key, start in zip(pipe.keys, starts):
    want = jax.random.key_data(jax.random.fold_in(jax.random.key(3), start))
    np.testing.assert_array_equal(key, want)
