"""Data: random-access sources and resumable grain pipelines of per-host batches.

Sources (each ``len(source)`` and ``source[i] -> raw record``):

* :class:`ShapesSource` - the built-in procedural captioned shapes ("a small blue square to the
  left of a large yellow triangle"); deterministic by ``(seed, index)``. :data:`SHAPES_VOCABULARY`
  lists every word.
* :class:`ImageFolderSource` - a folder with ``captions.jsonl`` (``{"file", "caption"}`` lines).
* :class:`ClassFolderSource` - class sub-folders captioned by a template ("a photo of a {}").
* :class:`TfdsSource` - a TFDS array_record dataset read with ``tfds.data_source`` (no
  TensorFlow); ``python -m vqd_jax.data.convert_folder`` writes one from an image folder, and
  :data:`PAPER_DATASETS` documents CUB-200, Oxford-102 and COCO.
* :class:`TokenSource` - pre-encoded VQ token records written by :func:`write_token_records`.

:func:`make_pipeline` turns a source into batches (``image`` uint8 ``[B, S, S, 3]`` or ``tokens``
int32 ``[B, N]``, plus ``text_ids``/``text_mask`` when given a tokenizer). Unusable records are
skipped and counted (:func:`skip_counts`), never fatal; a source that cannot be opened or has no
usable record at all is a :class:`DataSourceError`.
"""

from vqd_jax.data.decode import mirror_caption
from vqd_jax.data.decode import reset_skip_counts
from vqd_jax.data.decode import skip_counts
from vqd_jax.data.errors import DataSourceError
from vqd_jax.data.folders import ClassFolderSource
from vqd_jax.data.folders import ImageFolderSource
from vqd_jax.data.pipeline import image_loader
from vqd_jax.data.pipeline import iter_captions
from vqd_jax.data.pipeline import make_pipeline
from vqd_jax.data.shapes import ShapesSource
from vqd_jax.data.shapes import VOCABULARY as SHAPES_VOCABULARY
from vqd_jax.data.shapes import generate_example as generate_shapes_example
from vqd_jax.data.tfds_io import PAPER_DATASETS
from vqd_jax.data.tfds_io import TfdsSource
from vqd_jax.data.tfds_io import write_tfds_dataset
from vqd_jax.data.tokens import TokenSource
from vqd_jax.data.tokens import write_token_records

__all__ = [
    "ClassFolderSource", "DataSourceError", "ImageFolderSource", "PAPER_DATASETS",
    "SHAPES_VOCABULARY", "ShapesSource", "TfdsSource", "TokenSource", "generate_shapes_example",
    "image_loader", "iter_captions", "make_pipeline", "mirror_caption", "reset_skip_counts",
    "skip_counts", "write_tfds_dataset", "write_token_records",
]
