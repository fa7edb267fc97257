"""TFDS datasets as array_record, written and read without TensorFlow.

Reading uses ``tfds.data_source`` (random access, numpy decoding; TFDS ``Image`` features decode
with PIL). Writing uses a ``tfds.core.GeneratorBasedBuilder`` whose features avoid TensorFlow: the
image is a ``Tensor(uint8, [S, S, 3], encoding='zlib')`` and the captions a ``Sequence(Text())``
(TFDS's ``Image`` feature needs TensorFlow to *encode*, so it is not used for writing). The result
is a normal TFDS dataset folder::

  DATA_DIR/NAME/1.0.0/{dataset_info.json, features.json, NAME-SPLIT.array_record-0000N-of-0000M}

The paper's datasets cannot be downloaded here; prepare them once (see :data:`PAPER_DATASETS`) and
point ``data.path`` at the data_dir.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping

import numpy as np

log = logging.getLogger(__name__)

WRITE_VERSION = "1.0.0"
IMAGE_KEYS = ("image",)
CAPTION_KEYS = ("captions", "caption", "captions/text", "text")


@dataclasses.dataclass(frozen=True)
class PaperDataset:
  """Where a paper dataset is expected once prepared, and how to prepare it."""
  tfds_name: str
  image_key: str
  caption_key: str
  splits: tuple[str, ...]
  how_to_prepare: str


PAPER_DATASETS: dict[str, PaperDataset] = {
    "cub200": PaperDataset(
        "cub200_captions", "image", "captions", ("train", "test"),
        "CUB-200-2011 images with the 10 captions per image of Reed et al. (2016, 'text_c10'). "
        "Write captions.jsonl lines {\"file\": \"images/<class>/<img>.jpg\", \"caption\": ...} "
        "(one line per caption) per split, then: python -m vqd_jax.data.convert_folder --input "
        "cub_train --split train --input cub_test --split test --output DATA_DIR --name "
        "cub200_captions --image-size 256"),
    "oxford102": PaperDataset(
        "oxford102_captions", "image", "captions", ("train", "test"),
        "Oxford-102 flowers with the 10 captions per image of Reed et al. (2016). Same recipe as "
        "cub200 with --name oxford102_captions."),
    "coco": PaperDataset(
        "coco_captions", "image", "captions/text", ("train", "val"),
        "MS-COCO 2014 captions. Either build TFDS's own coco_captions with file_format="
        "'array_record' on a machine with TensorFlow (fields image, captions/text), or write "
        "captions.jsonl from captions_train2014.json / captions_val2014.json and run "
        "convert_folder with --name coco_captions (fields image, captions)."),
}


def _lookup(record: Mapping, key: str):
  value = record
  for part in key.split("/"):
    value = value[part]
  return value


def _has_key(record: Mapping, key: str) -> bool:
  try:
    _lookup(record, key)
    return True
  except (KeyError, TypeError, IndexError):
    return False


class TfdsSource:
  """Records ``{"image": uint8 array or bytes, "caption": str | [str]}`` from a TFDS data_source.

  Args:
    name: a TFDS dataset name (``"my_emoji"``, ``"coco_captions/2014"``) or a key of
      :data:`PAPER_DATASETS` (``"cub200"``, ``"oxford102"``, ``"coco"``).
    data_dir: the TFDS data_dir holding the prepared dataset.
    split: split name, e.g. ``"train"`` (TFDS slicing such as ``"train[:90%]"`` works too).
    image_key, caption_key: feature paths (``"captions/text"`` for nested features); by default the
      first present of ``IMAGE_KEYS`` / ``CAPTION_KEYS``. A caption feature holding several
      captions is sampled per example by the pipeline.
  """

  def __init__(self, name: str, data_dir: str, split: str = "train", *,
               image_key: str | None = None, caption_key: str | None = None):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    paper = PAPER_DATASETS.get(name)
    if paper is not None:
      name = paper.tfds_name
      image_key = image_key or paper.image_key
      caption_key = caption_key or paper.caption_key
    if not data_dir:
      raise ValueError(f"TFDS dataset {name!r} needs a data_dir (data.path) holding the prepared "
                       "array_record files.")
    self.name, self.data_dir, self.split = name, os.path.abspath(data_dir), split
    try:
      self._ds = tfds.data_source(name, data_dir=self.data_dir, split=split)
    except Exception as e:  # TFDS raises several types for "not there"; all mean the same here.
      hint = f" To prepare it: {paper.how_to_prepare}" if paper else (
          " Convert an image folder with: python -m vqd_jax.data.convert_folder --input DIR "
          f"--output {self.data_dir} --name {name}")
      raise FileNotFoundError(
          f"Cannot open TFDS dataset {name!r} split {split!r} under {self.data_dir} "
          f"({type(e).__name__}: {e}). It must be prepared as array_record.{hint}") from e
    if len(self._ds) == 0:
      raise ValueError(f"TFDS dataset {name!r} split {split!r} under {self.data_dir} is empty.")
    first = self._ds[0]
    self.image_key = image_key or next((k for k in IMAGE_KEYS if _has_key(first, k)), None)
    self.caption_key = caption_key or next((k for k in CAPTION_KEYS if _has_key(first, k)), None)
    for what, key, options in (("image", self.image_key, IMAGE_KEYS),
                               ("caption", self.caption_key, CAPTION_KEYS)):
      if key is None or not _has_key(first, key):
        raise ValueError(f"TFDS dataset {name!r} has no {what} feature {key or options}; its "
                         f"features are {sorted(first)}. Pass {what}_key=... to TfdsSource.")

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, index: int) -> dict:
    label = f"{self.name}[{self.split}][{int(index)}]"
    try:
      record = self._ds[int(index)]
    except Exception as e:  # a corrupt record or image; the pipeline counts and skips it
      return {"error": "unreadable_record", "name": f"{label}: {type(e).__name__}: {e}"}
    caption = _lookup(record, self.caption_key)
    if isinstance(caption, np.ndarray):
      caption = list(caption) if caption.ndim else caption.item()
    return {"image": _lookup(record, self.image_key), "caption": caption, "name": label}

  def captions(self) -> Iterable[str]:
    from vqd_jax.data import decode  # pylint: disable=import-outside-toplevel
    for i in range(len(self)):
      record = self[i]
      if "error" not in record:
        value = record["caption"]
        values = [value] if isinstance(value, (str, bytes, np.str_, np.bytes_)) else value
        yield from (c for c in (decode.as_text(v).strip() for v in values) if c)

  def __repr__(self) -> str:
    return (f"TfdsSource({self.name!r}, data_dir={self.data_dir!r}, split={self.split!r}, "
            f"{len(self)} records)")


Example = tuple[str, dict]  # (unique key, {"image": uint8 [S, S, 3], "captions": [str, ...]})


def write_tfds_dataset(data_dir: str, name: str,
                       splits: Mapping[str, Callable[[], Iterable[Example]]],
                       *, image_size: int, description: str = "",
                       overwrite: bool = False) -> str:
  """Writes a TFDS array_record dataset ``name`` (version 1.0.0) under ``data_dir``.

  ``splits`` maps split names to functions yielding ``(key, example)`` pairs (keys unique within a
  split). Returns the dataset's version folder. TFDS stores examples in an order hashed from the
  keys; the pipeline shuffles anyway.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """An image+captions builder whose name is chosen at run time."""
    VERSION = tfds.core.Version(WRITE_VERSION)
    # No source folder with checksums or metadata files. (Leaving it to TFDS makes it probe the
    # package with importlib_resources, which is not a dependency.)
    code_path = None

    def _info(self):
      features = tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(image_size, image_size, 3), dtype=np.uint8,
                                        encoding="zlib"),
          "captions": tfds.features.Sequence(tfds.features.Text()),
      })
      return tfds.core.DatasetInfo(builder=self, description=description, features=features)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(make) for split, make in splits.items()}

    def _generate_examples(self, make):  # pylint: disable=arguments-differ
      yield from make()

  _Builder.name = name
  version_dir = os.path.join(os.path.abspath(data_dir), name, WRITE_VERSION)
  if os.path.exists(version_dir):
    if not overwrite:
      raise FileExistsError(f"{version_dir} already exists; pass overwrite=True (--overwrite) or "
                            "choose another name.")
    shutil.rmtree(version_dir)
  builder = _Builder(data_dir=os.path.abspath(data_dir), file_format="array_record")
  # TFDS wants a download folder even though nothing is downloaded; keep it out of data_dir.
  with tempfile.TemporaryDirectory() as download_dir:
    builder.download_and_prepare(download_dir=download_dir)
  return version_dir
