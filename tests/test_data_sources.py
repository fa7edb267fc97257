"""Image-folder sources, decoding and token records: bad entries are skipped and counted."""

import json

import numpy as np
import pytest

from vqd_jax import data
from vqd_jax.data import decode
import test_data_helpers as helpers


def test_captioned_folder_skips_bad_entries(tmp_path):
  expected = helpers.make_captioned_folder(tmp_path)
  src = data.ImageFolderSource(str(tmp_path))
  assert len(src) == expected["entries"]
  assert dict(src.skipped) == expected["skipped"]
  assert src[2]["caption"] == "a square of green"  # stripped
  assert src[2]["image"].endswith("green.png")


def test_folder_with_nothing_usable_is_a_clear_error(tmp_path):
  (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "gone.png", "caption": "x"}) + "\n")
  with pytest.raises(ValueError, match="no usable entry.*missing_file"):
    data.ImageFolderSource(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="captions.jsonl"):
    data.ImageFolderSource(str(tmp_path / "nowhere"))


def test_class_folder_captions_from_folder_names(tmp_path):
  helpers.make_class_folder(tmp_path, per_class=2)
  src = data.ClassFolderSource(str(tmp_path), template="a photo of a {}")
  assert src.classes == ["green_frog", "red_fox"]
  assert len(src) == 4 and src.skipped["not_an_image_file"] == 1
  assert [src[i]["caption"] for i in range(4)] == ["a photo of a green frog"] * 2 + [
      "a photo of a red fox"] * 2
  assert list(data.iter_captions(src)) == [src[i]["caption"] for i in range(4)]
  with pytest.raises(ValueError, match=r"needs a '\{\}'"):
    data.ClassFolderSource(str(tmp_path), template="a photo")
  empty = tmp_path / "empty_tree"
  (empty / "cls").mkdir(parents=True)
  with pytest.raises(ValueError, match="no images in class sub-folders"):
    data.ClassFolderSource(str(empty))


def test_decoding_resizes_composites_and_counts_failures(tmp_path):
  helpers.make_captioned_folder(tmp_path)
  src = data.ImageFolderSource(str(tmp_path))
  data.reset_skip_counts()
  loaded = [decode.load_example(src[i], 8) for i in range(len(src))]
  assert [x is None for x in loaded] == [False, False, False, False, True]  # corrupt.jpg
  assert data.skip_counts() == {"undecodable_image": 1}
  red, _, _, blue, _ = loaded
  assert red["image"].shape == (8, 8, 3) and red["image"].dtype == np.uint8
  assert np.all(red["image"] == [255, 0, 0])
  # A fully transparent image is the white background after compositing.
  assert np.all(blue["image"] == 255)
  assert decode.load_example({"image": str(tmp_path / "images" / "empty.png"),
                              "caption": "x"}, 8) is None
  assert decode.load_example({"image": np.zeros((4, 4, 3), np.uint8), "caption": ""}, 4) is None
  assert data.skip_counts() == {"undecodable_image": 2, "empty_caption": 1}


def test_resize_square_center_and_random_crop():
  image = np.zeros((20, 40, 3), np.uint8)
  image[:, :20] = 255  # left half white
  center = decode.resize_square(image, 10)
  assert center.shape == (10, 10, 3)
  # Centre crop of the 10x20 resize: columns 5..15, half white, half black.
  assert np.all(center[:, :4] == 255) and np.all(center[:, 6:] == 0)
  rng = np.random.default_rng(0)
  crops = {decode.resize_square(image, 10, rng, random_crop=True).tobytes() for _ in range(20)}
  assert len(crops) > 1
  assert all(len(c) == 10 * 10 * 3 for c in crops)


def test_mirror_caption_swaps_left_and_right_only():
  assert data.mirror_caption("a red circle to the left of a blue square") == (
      "a red circle to the right of a blue square")
  assert data.mirror_caption("Right hand, LEFT foot, leftmost, bright lefty") == (
      "Left hand, RIGHT foot, rightmost, bright lefty")
  assert data.mirror_caption("a cat above a dog") == "a cat above a dog"


def test_token_records_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  records = [{"tokens": rng.integers(0, 512, 16), "caption": f"caption {i}"} for i in range(7)]
  assert data.write_token_records(str(tmp_path / "tok"), iter(records)) == 7
  src = data.TokenSource(str(tmp_path / "tok"))
  assert len(src) == 7 and src.token_shape == (16,)
  for i, record in enumerate(records):
    assert src[i]["tokens"].dtype == np.int32
    np.testing.assert_array_equal(src[i]["tokens"], record["tokens"])
    assert src[i]["caption"] == record["caption"]
  assert list(data.iter_captions(src)) == [r["caption"] for r in records]


def test_token_records_reject_bad_input(tmp_path):
  bad = [{"tokens": np.zeros(4, np.int32), "caption": "a"}, {"tokens": np.zeros(5, np.int32)}]
  with pytest.raises(ValueError, match="differs from the first"):
    data.write_token_records(str(tmp_path / "t1"), bad)
  with pytest.raises(ValueError, match="must be integers"):
    data.write_token_records(str(tmp_path / "t2"), [{"tokens": np.zeros(3), "caption": ""}])
  with pytest.raises(ValueError, match="empty"):
    data.write_token_records(str(tmp_path / "t3"), [])
  with pytest.raises(FileNotFoundError, match="not a finished token dataset"):
    data.TokenSource(str(tmp_path / "t1"))  # the failed write left no metadata


def _shared(name):
  path = helpers.SHARED_DATA / name
  if not path.is_dir():
    pytest.skip(f"shared dataset {path} is not available on this machine")
  return path


def test_real_captioned_folder_noto_emoji():
  src = data.ImageFolderSource(str(_shared("noto-emoji-72")))
  assert len(src) >= 3000 and not src.skipped
  example = decode.load_example(src[0], 32)
  assert example["image"].shape == (32, 32, 3)
  assert example["caption"].startswith("an emoji of")


def test_real_class_folder_cifar10():
  src = data.ClassFolderSource(str(_shared("cifar10-test")))
  assert len(src.classes) == 10 and len(src) == 10_000
  assert src[0]["caption"] == "a photo of a airplane"
  assert decode.load_example(src[0], 32)["image"].shape == (32, 32, 3)
