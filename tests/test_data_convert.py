"""Image folder -> TFDS array_record (no TensorFlow) -> tfds.data_source -> pipeline."""

import numpy as np
import pytest

from vqd_jax import data
from vqd_jax.data import convert_folder
import test_data_helpers as helpers
from cli_coverage import covers


@covers("data.convert_folder --input", "data.convert_folder --output",
        "data.convert_folder --name", "data.convert_folder --image-size")
def test_captioned_folder_converts_and_reads_back(tmp_path, capsys):
  helpers.make_captioned_folder(tmp_path / "in")
  out = tmp_path / "tfds"
  assert convert_folder.main(["--input", str(tmp_path / "in"), "--output", str(out),
                              "--name", "tiny_captions", "--image-size", "8"]) == 0
  printed = capsys.readouterr().out
  assert "examples=3" in printed and "skipped_undecodable_image=1" in printed
  assert (out / "tiny_captions" / "1.0.0" / "features.json").is_file()

  src = data.TfdsSource("tiny_captions", data_dir=str(out), split="train")
  assert len(src) == 3  # red, green (2 captions, stored once), blue; corrupt.jpg dropped
  by_colour = {}
  for i in range(len(src)):
    record = src[i]
    assert record["image"].shape == (8, 8, 3) and record["image"].dtype == np.uint8
    by_colour[tuple(record["image"][4, 4])] = list(record["caption"])
  assert sorted(by_colour[(0, 255, 0)]) == [b"a green square", b"a square of green"]
  assert list(by_colour[(255, 255, 255)]) == [b"a see-through blue square"]
  assert sorted(data.iter_captions(src)) == sorted(
      ["a red square", "a green square", "a square of green", "a see-through blue square"])

  batch = next(data.make_pipeline(src, batch_size=3, image_size=8, seed=0, num_epochs=1))
  colours = sorted(tuple(c) for c in batch["image"][:, 4, 4])
  assert colours == [(0, 255, 0), (255, 0, 0), (255, 255, 255)]


def test_class_folders_with_splits_and_paper_alias(tmp_path):
  helpers.make_class_folder(tmp_path / "train", per_class=3)
  helpers.make_class_folder(tmp_path / "test", per_class=1)
  out = tmp_path / "tfds"
  # A paper dataset's expected name: TfdsSource("cub200") must find it.
  name = data.PAPER_DATASETS["cub200"].tfds_name
  stats = convert_folder.convert_folder(
      {"train": str(tmp_path / "train"), "test": str(tmp_path / "test")}, str(out), name,
      image_size=16, caption_template="a photo of a {}")
  assert stats["train"]["examples"] == 6 and stats["test"]["examples"] == 2
  train = data.TfdsSource("cub200", data_dir=str(out), split="train")
  test = data.TfdsSource("cub200", data_dir=str(out), split="test")
  assert (len(train), len(test)) == (6, 2)
  assert sorted(set(data.iter_captions(test))) == ["a photo of a green frog",
                                                   "a photo of a red fox"]
  image = data.image_loader(train, image_size=16)(0)["image"]
  assert image.shape == (16, 16, 3)
  with pytest.raises(FileExistsError, match="already exists"):
    convert_folder.convert_folder({"train": str(tmp_path / "train")}, str(out), name)
  with pytest.raises(SystemExit, match="one split name per input"):
    convert_folder.main(["--input", "a", "--input", "b", "--output", str(out), "--name", "x"])


def test_missing_datasets_explain_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match="Reed et al"):
    data.TfdsSource("cub200", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="convert_folder"):
    data.TfdsSource("not_there", data_dir=str(tmp_path))


def test_folder_of_only_broken_images_writes_nothing(tmp_path):
  (tmp_path / "in" / "cls").mkdir(parents=True)
  (tmp_path / "in" / "cls" / "x.jpg").write_bytes(b"broken")
  with pytest.raises(ValueError, match="No readable image"):
    convert_folder.convert_folder({"train": str(tmp_path / "in")}, str(tmp_path / "out"), "broken")
  assert not (tmp_path / "out" / "broken" / "1.0.0").exists()
