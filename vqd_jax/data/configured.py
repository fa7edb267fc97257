"""A stage's data source and iterator from ``config.data`` (training and ``encode`` use it).

``data.source`` names where the examples come from; :data:`SOURCES` lists each with the ``data``
fields it reads. Presets for real image sizes (S, B, ithq, f8) leave it empty, and training refuses
to start until it is set (:func:`check_data_config`).
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from vqd_jax import data as data_lib

# data.source -> (the data fields it needs, example flags, what it reads).
SOURCES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "tfds": (("name", "path"), "--config.data.name=NAME --config.data.path=DATA_DIR "
             "[--config.data.split=train]",
             "a TFDS dataset prepared as array_record under DATA_DIR (NAME: its TFDS name, or "
             "cub200, oxford102, coco; python -m vqd_jax.data.convert_folder writes one from an "
             "image folder)"),
    "folder": (("path",), "--config.data.path=DIR",
               'images listed in DIR/captions.jsonl, one {"file": ..., "caption": ...} per line'),
    "class_folder": (("path",), "--config.data.path=DIR "
                     "[--config.data.caption_template='a photo of a {}']",
                     "one sub-folder of images per class, captioned by the template"),
    "tokens": (("path",), "--config.data.path=DIR",
               "VQ token records written by python -m vqd_jax.encode (diffusion stage only)"),
    "shapes": ((), "", "procedural captioned shapes (data.num_examples, data.two_object_prob)"),
}


def _choices(stage: str | None) -> str:
  lines = []
  for name, (_, flags, what) in SOURCES.items():
    if name == "tokens" and stage == "vqvae":
      continue
    lines.append(f"  --config.data.source={name} {flags}".rstrip() + f"\n      {what}")
  return "\n".join(lines)


def check_data_config(cfg: ml_collections.ConfigDict, stage: str | None = None) -> None:
  """Raises ValueError, naming the choices and their fields, unless ``cfg`` names usable data.

  Args:
    cfg: a config's ``data`` block.
    stage: ``config.stage`` ('vqvae' cannot train on tokens); None accepts every source.
  """
  if not cfg.source:
    raise ValueError(
        f"config.data.source is not set: this preset trains on {cfg.image_size}x{cfg.image_size} "
        "images of a dataset you choose. Set one of:\n" + _choices(stage))
  if cfg.source not in SOURCES or (cfg.source == "tokens" and stage == "vqvae"):
    where = f" for the {stage} stage" if stage else ""
    raise ValueError(f"config.data.source={cfg.source!r} is not a data source{where}. Choose one "
                     "of:\n" + _choices(stage))
  missing = [f"data.{name}" for name in SOURCES[cfg.source][0] if not cfg[name]]
  if missing:
    _, flags, what = SOURCES[cfg.source]
    raise ValueError(f"config.data.source={cfg.source!r} needs {' and '.join(missing)}: set "
                     f"{flags}; it reads {what}.")


def make_source(cfg: ml_collections.ConfigDict):
  """The random-access source named by ``cfg.source``.

  Raises:
    ValueError: ``cfg`` names no usable source (:func:`check_data_config`).
    vqd_jax.data.DataSourceError: the source cannot be opened (a missing folder or file, no
      usable entry), naming the config fields.
  """
  check_data_config(cfg)
  try:
    return _open_source(cfg)
  except (OSError, ValueError) as e:
    fields = "".join(f", data.{k}={cfg[k]!r}" for k in SOURCES[cfg.source][0])
    raise data_lib.DataSourceError(f"config.data.source={cfg.source!r}{fields}: {e}") from e


def _open_source(cfg: ml_collections.ConfigDict):
  kind = cfg.source
  if kind == "shapes":
    return data_lib.ShapesSource(resolution=cfg.image_size, seed=cfg.seed,
                                 length=cfg.num_examples, two_object_prob=cfg.two_object_prob)
  if kind == "folder":
    return data_lib.ImageFolderSource(cfg.path)
  if kind == "class_folder":
    return data_lib.ClassFolderSource(cfg.path, template=cfg.caption_template)
  if kind == "tfds":
    return data_lib.TfdsSource(cfg.name, data_dir=cfg.path, split=cfg.split)
  return data_lib.TokenSource(cfg.path)


def make_iterator(cfg: ml_collections.ConfigDict, batch_size: int, seed: int, process_index: int,
                  process_count: int, tokenize: Callable | None = None):
  """A resumable grain iterator of per-host batches (``batch_size`` is the global batch)."""
  if batch_size % process_count:
    raise ValueError(f"train.batch_size={batch_size} is not divisible by the {process_count} "
                     "processes.")
  return data_lib.make_pipeline(
      make_source(cfg), batch_size=batch_size // process_count, image_size=cfg.image_size,
      seed=seed, shuffle=True, random_crop=cfg.random_crop, random_flip=cfg.random_flip,
      tokenize=tokenize, process_index=process_index, process_count=process_count,
      worker_count=cfg.worker_count)
