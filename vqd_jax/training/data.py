"""Builds the training data iterator of a stage from ``config.data``.

Sources: 'shapes' (procedural, the default), 'folder' (captions.jsonl), 'class_folder' (a caption
template per class folder), 'tfds' (array_record read with tfds.data_source), 'tokens' (token arrays
written by ``python -m vqd_jax.encode``).
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from vqd_jax import data as data_lib


def make_source(cfg: ml_collections.ConfigDict):
  """The random-access source named by ``cfg.source``."""
  kind = cfg.source
  if kind == "shapes":
    return data_lib.ShapesSource(resolution=cfg.image_size, seed=cfg.get("seed", 0),
                                 length=cfg.get("num_examples", 1_000_000),
                                 two_object_prob=cfg.get("two_object_prob", 0.5))
  if kind == "folder":
    return data_lib.ImageFolderSource(cfg.path)
  if kind == "class_folder":
    return data_lib.ClassFolderSource(cfg.path, template=cfg.get("caption_template", "a photo of a {}"))
  if kind == "tfds":
    return data_lib.TfdsSource(cfg.name, data_dir=cfg.path, split=cfg.get("split", "train"))
  if kind == "tokens":
    return data_lib.TokenSource(cfg.path)
  raise ValueError(f"data.source must be one of shapes, folder, class_folder, tfds, tokens; got "
                   f"{kind!r}.")


def make_iterator(cfg: ml_collections.ConfigDict, batch_size: int, seed: int, process_index: int,
                  process_count: int, tokenize: Callable | None = None):
  """A resumable grain iterator of per-host batches (``batch_size`` is the global batch)."""
  if batch_size % process_count:
    raise ValueError(f"train.batch_size={batch_size} is not divisible by the {process_count} "
                     "processes.")
  return data_lib.make_pipeline(
      make_source(cfg), batch_size=batch_size // process_count, image_size=cfg.image_size,
      seed=seed, shuffle=True, random_crop=cfg.get("random_crop", False),
      random_flip=cfg.get("random_flip", False), tokenize=tokenize,
      process_index=process_index, process_count=process_count,
      worker_count=cfg.get("worker_count", 0))
