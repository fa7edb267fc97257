"""What ``python -m vqd_jax.sample`` reads from the user: prompts and image files.

Everything is read and checked before any model loads, so a bad input fails at once with a
message naming the flag, the file and the fix (``SystemExit``), never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def read_prompts(args) -> list[str]:
  if not args.prompt and not args.prompts_file:
    if args.image_only:
      return [""]
    raise SystemExit("Give the prompts with --prompt TEXT (repeatable) or --prompts-file FILE "
                     "(or --image REF.png --image-only for image variations).")
  if args.prompts_file:
    return read_prompts_file(args.prompts_file)
  empty = [i + 1 for i, prompt in enumerate(args.prompt) if not prompt.strip()]
  if empty and not args.image_only:
    raise SystemExit(f"--prompt number {empty[0]} is empty: give the text to draw, e.g. "
                     "--prompt \"a red circle\".")
  return list(args.prompt)


def read_prompts_file(path: str) -> list[str]:
  """The non-blank lines of a UTF-8 text file (a byte-order mark is dropped), stripped."""
  try:
    with open(path, encoding="utf-8-sig") as f:
      prompts = [line.strip() for line in f if line.strip()]
  except UnicodeDecodeError as e:
    raise SystemExit(f"--prompts-file {path!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
                     "save it as UTF-8.") from None
  except OSError as e:
    raise SystemExit(f"--prompts-file {path!r} cannot be read ({e.strerror or e}); give a text "
                     "file with one prompt per line.") from None
  if not prompts:
    raise SystemExit(f"--prompts-file {path} has no prompts.")
  return prompts


def read_image_files(args) -> dict:
  """``{"init", "mask", "image": PIL image or None, "paint": {phrase: [h, w] levels},
  "paint_files": {phrase: path}}``: every image flag's file decoded before any model loads, so a
  bad file fails at once."""
  from vqd_jax import images as images_lib  # pylint: disable=import-outside-toplevel

  def read(path: str | None, flag: str):
    return images_lib.read_image_file(path, flag) if path else None

  out = {"paint_files": parse_paint(args.paint)}
  try:
    out.update(init=read(args.init_image, "--init-image"), mask=read(args.mask, "--mask"),
               image=read(args.image, "--image"))
    out["paint"] = {phrase: images_lib.mask_levels(read(path, f"--paint {phrase!r}"))
                    for phrase, path in out["paint_files"].items()}
  except images_lib.ImageFileError as e:
    raise SystemExit(str(e)) from None
  return out


def parse_paint(pairs: Sequence[str]) -> dict[str, str]:
  """``["red circle=mask.png", ...]`` -> ``{"red circle": "mask.png"}`` (files checked)."""
  paint = {}
  for pair in pairs:
    phrase, sep, path = pair.rpartition("=")
    if not sep or not phrase.strip() or not path:
      raise SystemExit(f"--paint {pair!r}: write it as PHRASE=MASK.png, e.g. "
                       "--paint \"red circle=left.png\".")
    if not os.path.isfile(path):
      raise SystemExit(f"--paint {pair!r}: the mask {path!r} is not a file.")
    paint[phrase.strip()] = path
  return paint
