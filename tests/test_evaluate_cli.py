"""``python -m vqd_jax.evaluate shapes`` end to end on a folder of generated images."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cli_coverage import covers
from vqd_jax import evaluate
from vqd_jax.data import shapes


def write_samples(folder, n_right=6, n_wrong=2):
  """PNG samples + samples.jsonl: ``n_right`` true prompts and ``n_wrong`` mismatched ones."""
  (folder / "img").mkdir(parents=True)
  data = [shapes.generate_example(31, i) for i in range(n_right + n_wrong)]
  with open(folder / "samples.jsonl", "w", encoding="utf-8") as f:
    for i, ex in enumerate(data):
      name = f"img/{i:03d}.png"
      Image.fromarray(ex.image).save(folder / name)
      # Wrong prompts: the caption of a blank image, which nothing in ex.image matches.
      prompt = ex.caption if i < n_right else "a large white square above a small red circle"
      f.write(json.dumps({"file": name, "prompt": prompt, "seed": i}) + "\n")
  return data


@covers("evaluate shapes --samples")
def test_scores_a_samples_folder(tmp_path, capsys):
  data = write_samples(tmp_path)
  assert evaluate.main(["shapes", "--samples", str(tmp_path)]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[-1] == "shapes score: 0.750"  # 6 of 8
  report = json.loads((tmp_path / "shapes_score.json").read_text())
  assert report["score"] == pytest.approx(0.75) and report["num_samples"] == 8
  two_object = [i for i, ex in enumerate(data) if ex.relation is not None]
  assert report["num_two_object"] == sum(i < 6 for i in two_object) + 2
  assert [s["correct"] for s in report["samples"]] == [True] * 6 + [False] * 2
  assert any(line.startswith("relation accuracy:") for line in lines)
  assert any(line.startswith("one-object score:") for line in lines)
  # The wrong prompts ask for a large white square and a small red circle on a blank image.
  objects = next(line for line in lines if line.startswith("objects drawn right:"))
  assert "large square" in objects and "small circle" in objects
  assert report["object_accuracy"]["small circle"]["accuracy"] < 1.0


@covers("evaluate shapes --output")
def test_unreadable_image_counts_as_wrong_and_errors_are_clear(tmp_path, capsys):
  write_samples(tmp_path, n_right=3, n_wrong=0)
  (tmp_path / "img" / "001.png").write_bytes(b"not a png")
  evaluate.main(["shapes", "--samples", str(tmp_path), "--output", str(tmp_path / "r.json")])
  assert capsys.readouterr().out.strip().splitlines()[-1] == "shapes score: 0.667"
  report = json.loads((tmp_path / "r.json").read_text())
  assert "unreadable image" in report["samples"][1]["reason"]
  assert not (tmp_path / "shapes_score.json").exists()  # --output replaces the default report
  with pytest.raises(SystemExit, match="samples.jsonl does not exist"):
    evaluate.main(["shapes", "--samples", str(tmp_path / "nothing")])


def test_help_documents_every_flag():
  out = subprocess.run([sys.executable, "-m", "vqd_jax.evaluate", "shapes", "--help"],
                       capture_output=True, text=True, check=True,
                       cwd=Path(__file__).resolve().parents[1]).stdout
  for flag in ("--samples", "--output", "--show-failures"):
    assert flag in out
