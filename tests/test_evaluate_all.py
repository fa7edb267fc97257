"""``python -m vqd_jax.evaluate all`` on the tiny shapes run with random Inception and CLIP weights.

The figures mean nothing; what is checked is that the command samples the held-out prompts,
writes samples and references, and that each figure in metrics.json equals its own subcommand
(or the library) on the written folders. One run with every metric is shared by the module
(the FID's 2048 x 2048 matrix square root alone takes tens of seconds on a CPU); the
single-metric checks use the exact low-rank FID formula instead of a second square root.
"""

import contextlib
import io
import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cli_coverage import covers
from vqd_jax import evaluate
from vqd_jax.evaluation import all_cli, all_metrics, fid, heldout, inception_cli
from vqd_jax.evaluation import shapes as shapes_eval
from vqd_jax.evaluation.variations import references

NUM = 6  # samples: one sampling call, one Inception batch
METRICS = ["fid", "kid", "is", "fid_clip", "clip_score", "shapes_score"]
FLAGS = ["--num-samples", str(NUM), "--batch-size", str(NUM), "--steps", "2", "--no-progress"]


def read_folder(folder):
  """uint8 ``[N, H, W, 3]`` and prompts of the images ``folder/samples.jsonl`` lists."""
  records = shapes_eval.load_samples(str(folder))
  images = [np.asarray(Image.open(folder / r["file"]).convert("RGB")) for r in records]
  return np.stack(images), [r["prompt"] for r in records]


def run_all(argv):
  """``evaluate.main(["all", *argv])`` -> (exit code, printed text)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = evaluate.main(["all", *argv])
  return code, out.getvalue()


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
  """One ``evaluate all`` with --inception and --clip: its folder, inputs, output and metrics."""
  # pylint: disable=import-outside-toplevel
  pytest.importorskip("torch", reason="the random weights are written by PyTorch")
  from test_clip_score import write_tiny_clip
  from test_evaluate_fid_cli import write_random_inception
  root = tmp_path_factory.mktemp("evaluate_all")
  weights = write_random_inception(root / "inception.pth")
  clip = root / "clip"
  clip.mkdir()
  write_tiny_clip(str(clip))
  out = root / "out"
  code, printed = run_all(["--workdir", tiny_run, "--out", str(out), "--inception", weights,
                           "--clip", str(clip), "--splits", "2", *FLAGS])
  metrics = json.loads((out / "metrics.json").read_text())
  return dict(out=out, weights=weights, clip=str(clip), code=code, printed=printed,
              metrics=metrics, workdir=tiny_run)


def cli_report(argv, output):
  """``evaluate.main(argv)`` writing its JSON report to ``output``; the report."""
  with contextlib.redirect_stdout(io.StringIO()):
    assert evaluate.main([*argv, "--output", str(output)]) == 0
  return json.loads(output.read_text())


@pytest.mark.reference
def test_writes_held_out_samples_references_and_the_table(evaluated):
  out, metrics = evaluated["out"], evaluated["metrics"]
  assert evaluated["code"] == 0
  samples, prompts = read_folder(out / "samples")
  want_images, want_prompts = references(NUM, 32)
  assert prompts == want_prompts == shapes_eval.heldout_prompts(NUM, 32)
  assert samples.shape == (NUM, 32, 32, 3) and (out / "samples" / "grid.png").is_file()
  reference, reference_prompts = read_folder(out / "reference")
  np.testing.assert_array_equal(reference, want_images)
  assert reference_prompts == want_prompts
  assert list(metrics["metrics"]) == METRICS
  assert all("skipped" not in m for m in metrics["metrics"].values()), metrics["metrics"]
  assert metrics["num_samples"] == NUM and metrics["sampling"]["num_steps"] == 2
  assert metrics["data"]["source"] == "shapes" and "never trained on" in metrics["data"]["rule"]
  assert metrics["reference"] == str(out / "reference")
  table = (out / "metrics.md").read_text()
  assert table.startswith(f"# Metrics of {evaluated['workdir']}\n\n| metric | value | ± | n |")
  assert table.split("\n\n", 1)[1] in evaluated["printed"]  # the table, printed
  label = f"not comparable with published FIDs (features of {evaluated['clip']})"
  assert label in metrics["metrics"]["fid_clip"]["notes"]
  assert label in next(line for line in table.splitlines() if line.startswith("| fid_clip"))
  for name in METRICS:
    row = metrics["metrics"][name]
    assert np.isfinite(row["value"]) and row["n"] == NUM
    assert f"| {name} | {row['value']:.4f} |" in table
  assert metrics["metrics"]["kid"]["error_kind"] == f"std over 100 subsets of {NUM}"
  assert metrics["metrics"]["fid"]["error"] is None and metrics["metrics"]["is"]["error"] >= 0


@pytest.mark.reference
@covers("evaluate all --inception", "evaluate all --splits")
def test_inception_metrics_equal_their_subcommands(evaluated, monkeypatch):
  from test_fid_metrics import low_rank_fid  # pylint: disable=import-outside-toplevel
  from vqd_jax.evaluation.inception import load_inception  # pylint: disable=import-outside-toplevel
  out, metrics, weights = evaluated["out"], evaluated["metrics"]["metrics"], evaluated["weights"]
  model = load_inception(weights)
  monkeypatch.setattr(inception_cli, "_load_model", lambda args, metric: model)  # loaded once
  samples_pool, _ = model.features(read_folder(out / "samples")[0])
  reference_pool, _ = model.features(read_folder(out / "reference")[0])
  assert metrics["fid"]["value"] == pytest.approx(low_rank_fid(samples_pool, reference_pool),
                                                  rel=1e-5)
  folders = ["--samples", str(out / "samples"), "--inception", weights]
  kid = cli_report(["kid", *folders, "--reference", str(out / "reference")], out / "kid.json")
  assert (metrics["kid"]["value"], metrics["kid"]["error"]) == (kid["kid"], kid["kid_std"])
  score = cli_report(["is", *folders, "--splits", "2"], out / "is.json")
  assert (metrics["is"]["value"], metrics["is"]["error"]) == (score["is"], score["is_std"])
  assert score["splits"] == 2 and metrics["is"]["error_kind"] == "std over 2 splits"


@pytest.mark.reference
@covers("evaluate all --clip", "evaluate fid --features", "evaluate fid --clip")
def test_clip_and_shapes_metrics_equal_their_subcommands(evaluated):
  from vqd_jax.evaluation import clip_score  # pylint: disable=import-outside-toplevel
  out, metrics, clip = evaluated["out"], evaluated["metrics"]["metrics"], evaluated["clip"]
  image_encoder = clip_score.load_clip_scorer(clip)[1]
  samples = image_encoder.encode_images(read_folder(out / "samples")[0])
  reference = image_encoder.encode_images(read_folder(out / "reference")[0])
  want = fid.frechet_distance(*fid.statistics(samples), *fid.statistics(reference))
  assert metrics["fid_clip"]["value"] == pytest.approx(want, rel=1e-4)
  folders = ["--samples", str(out / "samples"), "--reference", str(out / "reference")]
  report = cli_report(["fid", "--features", "clip", "--clip", clip, *folders],
                      out / "fid_clip.json")
  assert report["fid_clip"] == metrics["fid_clip"]["value"] and "not comparable" in report["note"]
  assert report["fid_clip"] == pytest.approx(want, rel=1e-4) and report["clip"] == clip
  score = cli_report(["clip", "--samples", str(out / "samples"), "--clip", clip],
                     out / "clip.json")
  assert (metrics["clip_score"]["value"], metrics["clip_score"]["error"]) == (
      score["clip_score"], score["standard_error"])
  shapes = shapes_eval.evaluate_folder(str(out / "samples"), write=False)
  assert metrics["shapes_score"]["value"] == shapes["score"]


def test_without_networks_every_other_metric_is_skipped_with_its_reason(tiny_run, tmp_path):
  code, printed = run_all(["--workdir", tiny_run, "--out", str(tmp_path), *FLAGS])
  assert code == 0
  rows = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
  assert {k: v.get("skipped") for k, v in rows.items()} == {
      "fid": "no --inception given", "kid": "no --inception given", "is": "no --inception given",
      "fid_clip": "no --clip given", "clip_score": "no --clip given", "shapes_score": None}
  assert "| fid | skipped |  |  | no --inception given |" in printed
  assert rows["shapes_score"]["n"] == NUM and rows["shapes_score"]["error_kind"]


def test_an_npz_reference_skips_what_needs_images():
  inputs = all_cli.Inputs(args=None, samples="unused", inception=object(), clip=(None, None),
                          reference_npz=((np.zeros(2), np.eye(2)), None))
  assert all_metrics.measure("kid", inputs).skipped.startswith("the --reference .npz holds stat")
  assert "need reference images" in all_metrics.measure("fid_clip", inputs).skipped
  shapes = all_cli.Inputs(args=None, samples="unused",
                          heldout=heldout.HeldOut(None, [], [], "folder", "", "", []))
  assert "not the shapes dataset (source=folder)" in all_metrics.measure("shapes_score",
                                                                          shapes).skipped


def test_bad_input_exits_before_sampling(tiny_run, tmp_path):
  np.savez(tmp_path / "junk.npz", x=np.zeros(2))
  run = ["--workdir", tiny_run, "--out", str(tmp_path / "out"), *FLAGS]
  cases = [
      (["--workdir", str(tmp_path / "nope"), "--out", str(tmp_path / "out")], "No checkpoint"),
      ([*run, "--num-samples", "1"], "at least 2 samples"),
      ([*run, "--inception", str(tmp_path / "missing.pth")], "missing.pth.* does not exist"),
      ([*run, "--clip", str(tmp_path)], "neither a CLIP checkpoint folder"),
      ([*run, "--reference", str(tmp_path / "nope")], "neither a folder nor an .npz"),
      ([*run, "--reference", str(tmp_path / "junk.npz")], "lacks 'mu' and 'sigma'"),
      ([*run, "--temperature", "1"], "apply to AR runs only"),
  ]
  for argv, message in cases:
    with pytest.raises(SystemExit, match=message):
      run_all(argv)
  assert not (tmp_path / "out" / "samples").exists()
  folders = ["fid", "--samples", str(tmp_path), "--reference", str(tmp_path)]
  with pytest.raises(SystemExit, match="give --inception PATH"):
    evaluate.main(folders)
  with pytest.raises(SystemExit, match="--features clip and --clip DIR .* go together"):
    evaluate.main([*folders, "--features", "clip"])


def write_class_folder(root, classes=("cat", "dog", "fish"), per_class=4):
  for c in classes:
    (root / c).mkdir(parents=True)
    for i in range(per_class):
      Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")


def test_a_folder_dataset_gives_evenly_spaced_records(tmp_path):
  write_class_folder(tmp_path / "data")
  (tmp_path / "data" / "dog" / "2.png").write_bytes(b"not a png")
  data = ml_collections.ConfigDict(dict(source="class_folder", path=str(tmp_path / "data"),
                                        name="", image_size=8, caption_template="a {}"))
  held = heldout.examples(data, 6)
  assert held.indices == [0, 2, 4, 8, 10] and held.skipped == [6]
  assert held.captions == ["a cat", "a cat", "a dog", "a fish", "a fish"]
  assert held.images.shape == (5, 8, 8, 3) and held.source == "class_folder"
  assert "evenly spaced" in held.rule and "may have been trained on" in held.rule
  with pytest.raises(ValueError, match="holds 12"):
    heldout.examples(data, 13)


def test_a_token_run_takes_its_images_from_its_autoencoder(tmp_path):
  (tmp_path / "autoencoder").mkdir()
  vq_data = dict(source="folder", path="/data/emoji", image_size=64)
  (tmp_path / "autoencoder" / "config.json").write_text(json.dumps({"data": vq_data}))
  config = ml_collections.ConfigDict(dict(data=dict(source="tokens", path="/tok", image_size=32)))
  data, origin = heldout.image_data(config, str(tmp_path))
  assert (data.source, data.path, data.image_size) == ("folder", "/data/emoji", 32)
  assert "autoencoder" in origin and os.fspath(tmp_path) in origin
