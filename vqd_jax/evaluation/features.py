"""Inception features of a folder of images, for FID, KID and the Inception Score.

A folder is either a samples folder written by ``python -m vqd_jax.sample`` (its
``samples.jsonl`` lists the images to read) or any folder of images: then every ``.png``,
``.jpg``, ``.jpeg``, ``.webp`` and ``.bmp`` below it, recursively, in sorted order. Images are
converted to RGB as pytorch-fid converts them (PIL's ``convert("RGB")``) and fed at their own
size (the network resizes to 299 x 299), so images of one size share a batch; each distinct
size compiles the network once, so a folder of many sizes is slow to start. A file that cannot
be read is skipped and counted, never fatal.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
SAMPLES_FILE = "samples.jsonl"


@dataclasses.dataclass
class FolderFeatures:
  """Features of the readable images of a folder, in file order.

  Attributes:
    pool: float32 ``[N, D]`` pool features (FID, KID; ``D`` = 2048 for the Inception).
    logits: float32 ``[N, 1008]`` logits (Inception Score).
    files: the ``N`` files read, relative to the folder.
    skipped: the files that could not be read, relative to the folder.
  """
  pool: np.ndarray
  logits: np.ndarray
  files: list[str]
  skipped: list[str]


def list_images(folder: str | os.PathLike) -> list[str]:
  """The images of ``folder``, relative to it: those ``samples.jsonl`` lists if it has one, else
  every image file below it (sorted)."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder} is not a folder.")
  if os.path.isfile(os.path.join(folder, SAMPLES_FILE)):
    from vqd_jax.evaluation.shapes import load_samples  # pylint: disable=import-outside-toplevel
    return [record["file"] for record in load_samples(folder)]
  files = []
  for root, dirs, names in os.walk(folder):
    dirs.sort()
    files.extend(os.path.relpath(os.path.join(root, name), folder) for name in names
                 if name.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
  return sorted(files)


def read_rgb(path: str) -> np.ndarray | None:
  """uint8 ``[H, W, 3]`` of an image file, or None if it cannot be read."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(path) as image:
      image.load()
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
    return None


def _same_size_batches(folder: str, files: Sequence[str], batch_size: int,
                       skipped: list[str]) -> Iterator[tuple[list[int], list[np.ndarray]]]:
  """Yields ``(file indices, images)`` of at most ``batch_size`` images of one size each.

  Reads ``batch_size`` files at a time on a few threads; unreadable ones go to ``skipped``.
  """
  pending: dict[tuple[int, ...], tuple[list[int], list[np.ndarray]]] = {}
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    for start in range(0, len(files), batch_size):
      chunk = files[start:start + batch_size]
      images = pool.map(read_rgb, [os.path.join(folder, f) for f in chunk])
      for index, image in enumerate(images, start):
        if image is None:
          skipped.append(files[index])
          continue
        indices, batch = pending.setdefault(image.shape, ([], []))
        indices.append(index)
        batch.append(image)
        if len(batch) == batch_size:
          yield pending.pop(image.shape)
  yield from pending.values()


def _run_batch(model: Any, images: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
  """``model.features`` of ``images``, padded to ``size`` by repeating the last one (one compiled
  shape per image size); returns ``(pool [n, 2048], logits [n, 1008])`` of the real ones."""
  n = len(images)
  stacked = np.stack(images + [images[-1]] * (size - n))
  pool, logits = model.features(stacked)
  return np.asarray(pool, np.float32)[:n], np.asarray(logits, np.float32)[:n]


def folder_features(folder: str | os.PathLike, model: Any, batch_size: int = 50,
                    progress: bool = True, desc: str = "inception") -> FolderFeatures:
  """Features of the images of ``folder`` (see :func:`list_images`) under ``model``, an object
  whose ``features(uint8 [B, H, W, 3])`` returns ``(pool [B, 2048], logits [B, 1008])``, e.g.
  :func:`vqd_jax.evaluation.inception.load_inception`'s. Shows a progress bar with its rate."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
  folder = os.fspath(folder)
  files = list_images(folder)
  size = min(batch_size, len(files))
  pools, logits, order, skipped = [], [], [], []
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  with tqdm(total=len(files), desc=desc, unit="img", disable=not progress) as bar:
    for indices, images in _same_size_batches(folder, files, batch_size, skipped):
      pool, logit = _run_batch(model, images, size)
      pools.append(pool)
      logits.append(logit)
      order.extend(indices)
      bar.update(len(order) + len(skipped) - bar.n)  # skipped files count as done
  if not order:
    raise ValueError(f"None of the {len(files)} images in {folder} could be read "
                     f"(e.g. {skipped[0]}).")
  file_order = np.argsort(order, kind="stable")
  return FolderFeatures(pool=np.concatenate(pools)[file_order],
                        logits=np.concatenate(logits)[file_order],
                        files=[files[i] for i in sorted(order)], skipped=skipped)
