"""Captioned training folders (``data.source=folder``) for ``python -m vqd_jax.bench fuzz``.

Each folder case holds one good record and one odd one, read through the folder source and the
loader ``encode`` and training use; it is handled when the odd record is loaded correctly or
skipped and counted under the expected reason (``ImageFolderSource.skipped`` at indexing,
``vqd_jax.data.skip_counts()`` at decoding).
"""

from __future__ import annotations

import collections
import functools
import os

from vqd_jax.benchmarks import fuzz_files as files
from vqd_jax.benchmarks.fuzz import OK, Case

GOOD = {"file": "good.png", "caption": "a white square"}


def _record(name: str, **fields) -> dict:
  return {"file": name, "caption": "an odd image", **fields}


def _read_folder(root: str) -> tuple[list, collections.Counter]:
  """``(examples, skipped)``: every record of the folder loaded at the tiny image size, and the
  records skipped by reason while indexing and decoding."""
  from vqd_jax import data  # pylint: disable=import-outside-toplevel
  before = collections.Counter(data.skip_counts())
  source = data.ImageFolderSource(root)
  load = data.image_loader(source, image_size=files.SIDE)
  examples = [load(i) for i in range(len(source))]
  skipped = collections.Counter(source.skipped)
  skipped.update(collections.Counter(data.skip_counts()) - before)
  return [e for e in examples if e is not None], skipped


def _red_on_the_right(examples: list) -> str | None:
  image = examples[-1]["image"].astype(int)
  left, right = image[:, :8].mean((0, 1)), image[:, -8:].mean((0, 1))
  if not (right[0] > right[2] and left[2] > left[0]):
    return "the EXIF orientation was not applied (red should be on the right)"
  return None


def _dark(examples: list) -> str | None:
  mean = float(examples[-1]["image"].mean())
  return None if mean < 8 else f"a near-black 16-bit image reads as grey level {mean:.0f}"


def _alpha_on_white(examples: list) -> str | None:
  image = examples[-1]["image"]
  corner = image[-4:, -4:].min()  # transparent there, white underneath
  return None if corner > 240 else f"transparent pixels read as {corner}, not white"


def _folder_case(root: str, images: dict[str, str], kind: str, lines: list, usable: int,
                 skipped: dict[str, int] | None = None, image: str | None = None,
                 check_examples=None, bom: bool = False) -> Case:
  """A folder of the good record, ``lines`` and the image file of kind ``image``."""
  copies = {"good.png": images["png"]}
  if image is not None:
    copies[os.path.basename(images[image])] = images[image]
  folder = files.write_captioned_folder(os.path.join(root, "folders", kind), [GOOD] + lines,
                                        copies, bom)
  state = {}

  def run() -> int:
    state["examples"], state["skipped"] = _read_folder(folder)
    print(f"{len(state['examples'])} usable, skipped {dict(state['skipped'])}")
    return 0

  def check(_: str) -> str | None:
    got, want = len(state["examples"]), dict(skipped or {})
    if got != usable or dict(state["skipped"]) != want:
      return f"{got} usable, skipped {dict(state['skipped'])}; expected {usable}, skipped {want}"
    return check_examples(state["examples"]) if check_examples else None

  return Case(f"folder/{kind}", run, OK, check)


def folder_cases(root: str, images: dict[str, str]) -> list[Case]:
  f = functools.partial(_folder_case, root, images)

  def odd(kind: str, image: str, usable: int = 2, skipped=None, check=None) -> Case:
    return _folder_case(root, images, kind, [_record(os.path.basename(images[image]))], usable,
                        skipped, image, check)

  undecodable = {"undecodable_image": 1}
  return [
      f("malformed_json_line", ['{"file": "good.png", "caption": '], 1, {"bad_json_line": 1}),
      f("json_array_line", ["[1, 2]"], 1, {"no_file_field": 1}),
      f("missing_file_key", [{"caption": "no file"}], 1, {"no_file_field": 1}),
      f("file_not_a_string", [{"file": 7, "caption": "x"}], 1, {"no_file_field": 1}),
      f("missing_caption_key", [{"file": "good.png"}], 1, {"empty_caption": 1}),
      f("caption_not_a_string", [{"file": "good.png", "caption": 3}], 1, {"empty_caption": 1}),
      f("missing_image_file", [_record("gone.png")], 1, {"missing_file": 1}),
      f("byte_order_mark", [], 1, bom=True),
      f("invalid_utf8_line", [b'{"file": "good.png", "caption": "caf\xe9"}'], 1,
        {"not_utf8_line": 1}),
      odd("grayscale", "mode_l"),
      odd("palette", "mode_p"),
      odd("cmyk_jpeg", "cmyk_jpeg"),
      odd("exif_rotated", "exif_rotated", check=_red_on_the_right),
      odd("png16_dark", "png16_dark", check=_dark),
      odd("rgba", "rgba", check=_alpha_on_white),
      odd("one_pixel", "one_pixel"),
      odd("10000x10000", "very_large"),
      odd("decompression_bomb", "bomb", 1, undecodable),
      odd("truncated_image", "truncated", 1, undecodable),
      odd("not_an_image", "not_image", 1, undecodable),
      odd("empty_image_file", "empty_file", 1, undecodable),
  ]


def all_bad_folder(root: str, images: dict[str, str]) -> str:
  """A folder whose every record is unusable (for the CLIs' error)."""
  return files.write_captioned_folder(
      os.path.join(root, "folders", "all_bad"),
      ["{oops", {"caption": "no file"}, _record("truncated.png"), _record("gone.png")],
      {"truncated.png": images["truncated"]})


def mixed_folder(root: str, images: dict[str, str]) -> tuple[str, int]:
  """``(folder, usable records)``: good, odd and bad records together (for ``encode``)."""
  odd = ("mode_l", "mode_p", "exif_rotated", "one_pixel", "rgba", "cmyk_jpeg")
  bad = ("truncated", "not_image", "bomb")
  names = {os.path.basename(images[k]): images[k] for k in odd + bad + ("png",)}
  lines = [_record(name) for name in names] + ["{oops", {"caption": "x"}, _record("gone.png")]
  folder = files.write_captioned_folder(os.path.join(root, "folders", "mixed"), lines, names)
  return folder, len(odd) + 1
