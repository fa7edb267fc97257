"""Pre-encoded token datasets: ``{"tokens": int32 [N], "caption": str}`` records in array_record.

Records may also hold precomputed embeddings (``{name}_states`` / ``_pooled`` float16 and
``{name}_mask`` bool, :mod:`vqd_jax.text.embeddings`); ``metadata.json`` then lists their layout
under ``"embeddings"``.

Written once by ``python -m vqd_jax.encode`` (VQ codes of every training image), so that diffusion
training never runs the image encoder. Layout of a token folder::

  DIR/tokens.array_record   one msgpack record per example (flax.serialization format)
  DIR/metadata.json         {"format": "vqd_jax.tokens", "version": 1, "num_records": ...,
                             "token_shape": [N], "files": ["tokens.array_record"],
                             "autoencoder": "<FrozenAutoencoder.fingerprint of the encoder>"}

``metadata.json`` is written last, so a folder without it is an interrupted write.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

import numpy as np
from flax import serialization

from vqd_jax.data import decode
from vqd_jax.data.errors import DataSourceError

FORMAT = "vqd_jax.tokens"
VERSION = 1
METADATA_FILE = "metadata.json"
RECORDS_FILE = "tokens.array_record"


EMBEDDING_SUFFIXES = ("_states", "_mask", "_pooled")


def _embedding_entries(record: Mapping) -> dict[str, np.ndarray]:
  """A record's embedding arrays, stored compactly: float16 vectors, bool masks."""
  out = {}
  for key, value in record.items():
    if key.endswith(EMBEDDING_SUFFIXES):
      value = np.asarray(value)
      out[key] = value.astype(bool) if key.endswith("_mask") else value.astype(np.float16)
  return out


def write_token_records(path: str, records: Iterable[Mapping],
                        embeddings: list[dict] | None = None, autoencoder: str = "") -> int:
  """Writes ``{"tokens": int [N], "caption": str}`` records into the folder ``path``; returns count.

  All records must share one token shape. Existing token records in ``path`` are replaced.
  ``embeddings``: the layout of the embedding entries the records carry (saved in the metadata).
  ``autoencoder``: the fingerprint of the autoencoder that wrote the tokens ("" = unknown).
  """
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  os.makedirs(path, exist_ok=True)
  metadata_path = os.path.join(path, METADATA_FILE)
  if os.path.exists(metadata_path):
    os.remove(metadata_path)  # the folder is incomplete until the new metadata lands
  partial = os.path.join(path, RECORDS_FILE + ".partial")
  writer = array_record_module.ArrayRecordWriter(partial, "group_size:1")
  shape, count = None, 0
  try:
    for record in records:
      tokens = np.asarray(record["tokens"])
      if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"Record {count}: tokens must be integers, got {tokens.dtype}.")
      if shape is None:
        shape = tokens.shape
      elif tokens.shape != shape:
        raise ValueError(f"Record {count}: token shape {tokens.shape} differs from the first "
                         f"record's {shape}; all records of a token dataset must match.")
      caption = str(record.get("caption", ""))
      writer.write(serialization.msgpack_serialize(
          {"tokens": tokens.astype(np.int32), "caption": caption, **_embedding_entries(record)}))
      count += 1
  finally:
    writer.close()
  if count == 0:
    os.remove(partial)
    raise DataSourceError(f"No records to write into {path}: the input iterable was empty (were "
                          f"all images unreadable? skipped so far: {decode.skip_counts()}).")
  os.replace(partial, os.path.join(path, RECORDS_FILE))
  with open(metadata_path, "w", encoding="utf-8") as f:
    json.dump({"format": FORMAT, "version": VERSION, "num_records": count,
               "token_shape": list(shape), "files": [RECORDS_FILE],
               "embeddings": list(embeddings or []), "autoencoder": autoencoder}, f, indent=2)
  return count


class TokenSource:
  """Random-access reader of a token folder: records ``{"tokens": int32 [N], "caption": str}``."""

  def __init__(self, path: str):
    import grain  # pylint: disable=import-outside-toplevel
    self.path = os.path.abspath(path)
    metadata_path = os.path.join(self.path, METADATA_FILE)
    if not os.path.isfile(metadata_path):
      raise FileNotFoundError(
          f"{metadata_path} does not exist: {self.path} is not a finished token dataset. Write "
          "one with `python -m vqd_jax.encode` (an interrupted write leaves no metadata).")
    with open(metadata_path, encoding="utf-8") as f:
      self.metadata = json.load(f)
    if self.metadata.get("format") != FORMAT:
      raise ValueError(f"{metadata_path} is not a {FORMAT} metadata file.")
    files = [os.path.join(self.path, name) for name in self.metadata["files"]]
    self._records = grain.sources.ArrayRecordDataSource(files)
    if len(self._records) != self.metadata["num_records"]:
      raise ValueError(f"{self.path}: metadata says {self.metadata['num_records']} records but the "
                       f"files hold {len(self._records)}; re-run the encode step.")
    self.token_shape = tuple(self.metadata["token_shape"])

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    record = serialization.msgpack_restore(self._records[int(index)])
    return {"tokens": np.asarray(record["tokens"], np.int32), "caption": record["caption"],
            **{k: np.asarray(v) for k, v in record.items() if k.endswith(EMBEDDING_SUFFIXES)}}

  @property
  def embeddings(self) -> list[dict]:
    """The layout of the records' embedding entries (``EmbeddingSource`` fields; may be empty)."""
    return list(self.metadata.get("embeddings", []))

  @property
  def autoencoder(self) -> str:
    """The fingerprint of the autoencoder that wrote the tokens ("" for records written without)."""
    return str(self.metadata.get("autoencoder", ""))

  def captions(self) -> list[str]:
    return [self[i]["caption"] for i in range(len(self))]

  def __repr__(self) -> str:
    return f"TokenSource({self.path!r}, {len(self)} records of {self.token_shape} tokens)"
