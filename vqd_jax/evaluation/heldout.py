"""The evaluation examples of a trained run's own dataset: captions to sample, images to compare.

The dataset is the run's ``config.data``; a run trained on token records (``source='tokens'``)
takes its images from its autoencoder's ``config.data`` (the images those tokens encode: the copy
in ``WORKDIR/autoencoder/``, else ``config.vqvae_workdir``). Which examples are taken:

* ``shapes``: the held-out shapes examples, drawn with
  :data:`vqd_jax.evaluation.shapes.HELDOUT_SEED`, a seed no training run uses: the first N are the
  prompts ``python -m vqd_jax.quickstart`` and ``evaluate paint`` sample. Never trained on.
* every other source (``folder``, ``class_folder``, ``tfds``): the data configs define no
  evaluation split, so N records at evenly spaced indices ``i * M // N`` (``i < N``) of the M the
  source holds, so that a class folder, stored class by class, gives every class its share. These
  records may have been trained on: the report says so. Unusable records (unreadable image, empty
  caption) are left out and counted.

Images come at the run's ``data.image_size`` (resized as training resizes them), captions as the
data source gives them (the first of several).
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections
import numpy as np

SHAPES_RULE = ("held-out shapes examples (seed {seed}, which no training run uses): the first {n}, "
               "never trained on")
SPREAD_RULE = ("{n} of the {m} records of {where} at evenly spaced indices i * {m} // {num}: the "
               "data config defines no evaluation split, so these may have been trained on")


@dataclasses.dataclass
class HeldOut:
  """Evaluation examples of a dataset.

  Attributes:
    images: uint8 ``[N, S, S, 3]`` at the run's image size.
    captions: the ``N`` captions.
    indices: each example's index in its data source.
    source: ``config.data.source`` of the images (``shapes``, ``folder``, ...).
    rule: how the examples were chosen, in words.
    origin: which config named the dataset.
    skipped: indices of unusable records left out.
  """
  images: np.ndarray
  captions: list[str]
  indices: list[int]
  source: str
  rule: str
  origin: str
  skipped: list[int]


def run_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """The config saved with a run's checkpoint ``step`` (default: the latest)."""
  from vqd_jax.inference import loading  # pylint: disable=import-outside-toplevel
  stage = loading.run_stage(workdir)
  ckpt, _, config = loading.open_run(workdir, stage, step, "python -m vqd_jax.train ...")
  ckpt.close()
  return config


def _autoencoder_data(config: ml_collections.ConfigDict, workdir: str
                      ) -> tuple[ml_collections.ConfigDict, str]:
  """``(data block, where it was read)`` of a token run's autoencoder."""
  from vqd_jax.inference import run_autoencoder  # pylint: disable=import-outside-toplevel
  copy = os.path.join(run_autoencoder.autoencoder_dir(workdir), "config.json")
  if os.path.isfile(copy):
    with open(copy, encoding="utf-8") as f:
      return ml_collections.ConfigDict(json.load(f)["data"]), copy
  source = config.get("vqvae_workdir") or ""
  if not source:
    raise ValueError(f"{workdir} trains on token records and names no autoencoder (no "
                     "autoencoder/ copy, empty config.vqvae_workdir): its images are unknown.")
  return run_config(source).data, source


def image_data(config: ml_collections.ConfigDict, workdir: str
               ) -> tuple[ml_collections.ConfigDict, str]:
  """``(data block naming the run's images, which config it came from)``; the image size is the
  run's ``data.image_size``."""
  if config.data.source != "tokens":
    return config.data, "the run's config.data"
  data, where = _autoencoder_data(config, workdir)
  data = ml_collections.ConfigDict(data.to_dict())
  data.image_size = config.data.image_size
  return data, f"the autoencoder's config.data ({where}): the run trains on token records"


def _shapes(data: ml_collections.ConfigDict, num: int, origin: str) -> HeldOut:
  from vqd_jax.evaluation import shapes as shapes_eval  # pylint: disable=import-outside-toplevel
  from vqd_jax.evaluation.variations import references  # pylint: disable=import-outside-toplevel
  images, captions = references(num, int(data.image_size))
  return HeldOut(images, captions, list(range(num)), "shapes",
                 SHAPES_RULE.format(seed=shapes_eval.HELDOUT_SEED, n=num), origin, [])


def spread_indices(total: int, num: int) -> list[int]:
  """``num`` evenly spaced indices into ``range(total)``: ``i * total // num``."""
  if not 1 <= num <= total:
    raise ValueError(f"Asked for {num} evaluation examples; the data source holds {total}.")
  return [i * total // num for i in range(num)]


def examples(data: ml_collections.ConfigDict, num: int, origin: str = "config.data") -> HeldOut:
  """The ``num`` evaluation examples of the dataset ``data`` (a config's ``data`` block) by the
  rule of the module docstring."""
  if data.source == "shapes":
    return _shapes(data, num, origin)
  from vqd_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from vqd_jax.data import configured  # pylint: disable=import-outside-toplevel
  source = configured.make_source(data)
  load = data_lib.image_loader(source, image_size=int(data.image_size))
  images, captions, indices, skipped = [], [], [], []
  for index in spread_indices(len(source), num):
    example = load(index)
    if example is None:
      skipped.append(index)
      continue
    images.append(example["image"])
    captions.append(example["caption"])
    indices.append(index)
  where = data.path or data.name
  if len(images) < 2:
    raise ValueError(f"Only {len(images)} of the {num} evaluation records of {where} are usable.")
  rule = SPREAD_RULE.format(n=len(images), m=len(source), where=where, num=num)
  if skipped:
    rule += f"; {len(skipped)} unusable left out"
  return HeldOut(np.stack(images), captions, indices, str(data.source), rule, origin, skipped)


def run_examples(workdir: str, num: int, step: int | None = None) -> HeldOut:
  """The ``num`` evaluation examples of the dataset the run in ``workdir`` was trained on."""
  config = run_config(workdir, step)
  data, origin = image_data(config, workdir)
  return examples(data, num, origin)
