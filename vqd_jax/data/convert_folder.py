r"""Converts an image folder into a TFDS array_record dataset (no TensorFlow needed).

  python -m vqd_jax.data.convert_folder --input ../shared/data/noto-emoji-72 \
      --output ~/tensorflow_datasets --name noto_emoji --image-size 64

A folder with a ``captions.jsonl`` ({"file", "caption"} per line; a file may have several lines) is
read as a captioned folder, any other folder as class sub-folders captioned by
``--caption-template``. Every image is centre-cropped to a square and resized to ``--image-size``;
unreadable images, missing files and empty captions are skipped and reported. Each example stores
``image`` (uint8 ``[S, S, 3]``) and ``captions`` (all captions of that image). Train on it with
``data.source='tfds' data.name=NAME data.path=DATA_DIR``.

Several splits: repeat ``--input DIR --split NAME`` pairs (``--split`` defaults to train).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from collections.abc import Sequence

from vqd_jax.data import decode
from vqd_jax.data import folders
from vqd_jax.data import tfds_io


def open_folder(path: str, caption_template: str):
  """The folder's source: captioned (captions.jsonl) or class sub-folders."""
  if os.path.isfile(os.path.join(path, "captions.jsonl")):
    return folders.ImageFolderSource(path)
  return folders.ClassFolderSource(path, template=caption_template)


def grouped_entries(source) -> list[tuple[str, list[str]]]:
  """``[(image path, [captions])]`` in first-seen order, so each image is stored once."""
  groups: dict[str, list[str]] = collections.OrderedDict()
  for i in range(len(source)):
    record = source[i]
    groups.setdefault(record["image"], []).append(record["caption"])
  return list(groups.items())


def _readable(file_path: str) -> bool:
  try:
    decode.read_image(file_path)
    return True
  except (OSError, ValueError, SyntaxError):
    return False


def convert_folder(inputs: dict[str, str], output: str, name: str, *, image_size: int = 32,
                   caption_template: str = "a photo of a {}", overwrite: bool = False
                   ) -> dict[str, dict[str, int]]:
  """Writes ``{split: folder}`` as TFDS dataset ``name`` under ``output``; returns split stats."""
  if image_size <= 0:
    raise ValueError(f"--image-size must be positive, got {image_size}.")
  stats: dict[str, dict[str, int]] = {}
  plans = {}
  for split, path in inputs.items():
    source = open_folder(path, caption_template)
    entries = grouped_entries(source)
    stats[split] = collections.Counter({f"skipped_{k}": v for k, v in source.skipped.items()})
    if not any(_readable(file_path) for file_path, _ in entries):
      # TFDS cannot write an empty split; say why before writing anything.
      raise ValueError(f"No readable image in split {split!r} ({path}); nothing was written.")
    plans[split] = (os.path.abspath(path), entries)

  def make_examples(split: str):
    root, entries = plans[split]

    def generate():
      for file_path, captions in entries:
        try:
          image = decode.resize_square(decode.read_image(file_path), image_size)
        except (OSError, ValueError, SyntaxError) as e:
          stats[split]["skipped_undecodable_image"] += 1
          decode.count_skip("undecodable_image", f"{file_path}: {type(e).__name__}: {e}")
          continue
        stats[split]["examples"] += 1
        stats[split]["captions"] += len(captions)
        yield os.path.relpath(file_path, root), {"image": image, "captions": captions}

    return generate

  version_dir = tfds_io.write_tfds_dataset(
      output, name, {split: make_examples(split) for split in inputs}, image_size=image_size,
      description=f"Converted by vqd_jax.data.convert_folder from {dict(inputs)}.",
      overwrite=overwrite)
  return {split: dict(counter) for split, counter in stats.items()}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.data.convert_folder", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--input", action="append", required=True, metavar="DIR",
                 help="Image folder: with captions.jsonl, or with one sub-folder per class. Repeat "
                      "with --split for several splits.")
  p.add_argument("--split", action="append", default=None, metavar="NAME",
                 help="Split name of the matching --input (default: train).")
  p.add_argument("--output", required=True, metavar="DATA_DIR",
                 help="TFDS data_dir to write into (the dataset lands in DATA_DIR/NAME/1.0.0).")
  p.add_argument("--name", required=True,
                 help="Dataset name, lower_snake_case (e.g. noto_emoji, cub200_captions).")
  p.add_argument("--image-size", type=int, default=32,
                 help="Side S of the stored square uint8 [S, S, 3] images (default 32).")
  p.add_argument("--caption-template", default="a photo of a {}",
                 help="Caption for class folders; {} is the folder name with _ -> space "
                      "(default 'a photo of a {}').")
  p.add_argument("--overwrite", action="store_true",
                 help="Replace an existing dataset of the same name and version.")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  splits = args.split or ["train"]
  if len(splits) != len(args.input):
    raise SystemExit(f"Got {len(args.input)} --input and {len(splits)} --split; give one split "
                     "name per input (or no --split for a single train input).")
  if len(set(splits)) != len(splits):
    raise SystemExit(f"Split names must be distinct, got {splits}.")
  if not args.name.replace("_", "").isalnum() or args.name != args.name.lower():
    raise SystemExit(f"--name {args.name!r} must be lower_snake_case (letters, digits, _).")
  t0 = time.perf_counter()
  try:
    stats = convert_folder(dict(zip(splits, args.input)), args.output, args.name,
                           image_size=args.image_size, caption_template=args.caption_template,
                           overwrite=args.overwrite)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    raise SystemExit(f"convert_folder: {e}") from e
  for split, counts in stats.items():
    print(f"{split}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
  print(f"Wrote {args.name} to {os.path.join(os.path.abspath(args.output), args.name)} in "
        f"{time.perf_counter() - t0:.1f}s. Read it with data.source='tfds' "
        f"data.name={args.name} data.path={args.output}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
