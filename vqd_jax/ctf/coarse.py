"""The code -> cluster table, saved as JSON beside pre-encoded token records.

``labels[k]`` is the coarse label (k-means cluster) of fine code k. Applying the table to a token
map gives its coarse map; ``cluster_members`` turns it into a ``[C, K]`` mask that restricts the
fine predictor to the codes of a position's cluster.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

COARSE_TABLE_FILE = "coarse_table.json"
_FORMAT = "vqd_jax.coarse_table"
_VERSION = 1


@dataclasses.dataclass(frozen=True)
class CoarseTable:
  """A loaded code -> cluster table.

  Attributes:
    labels: ``[K]`` int32 in ``[0, num_clusters)``, the cluster of each code.
    num_clusters: C.
    balanced: whether every cluster holds exactly K / C codes.
    seed: the k-means seed that built it.
  """

  labels: np.ndarray
  num_clusters: int
  balanced: bool
  seed: int


def _checked_labels(labels, num_clusters: int, where: str) -> np.ndarray:
  """``labels`` as ``[K]`` int32 after checking it is 1-D, integral and in ``[0, C)``."""
  out = np.asarray(labels)
  if out.ndim != 1 or out.size == 0:
    raise ValueError(f"{where}: labels must be a non-empty 1-D [K] array, got shape {out.shape}.")
  if not np.issubdtype(out.dtype, np.integer):
    raise ValueError(f"{where}: labels must be integers, got dtype {out.dtype}.")
  if int(num_clusters) < 1:
    raise ValueError(f"{where}: num_clusters must be >= 1, got {num_clusters}.")
  if out.min() < 0 or out.max() >= num_clusters:
    raise ValueError(f"{where}: labels must lie in [0, {num_clusters}), got range "
                     f"[{out.min()}, {out.max()}]; rebuild the table with --coarse-clusters.")
  return out.astype(np.int32)


def save_coarse_table(folder: str, labels: np.ndarray, *, num_clusters: int, balanced: bool,
                      seed: int, inertia: float) -> str:
  """Writes ``labels`` ``[K]`` to ``folder/coarse_table.json`` atomically; returns the path."""
  labels = _checked_labels(labels, num_clusters, "save_coarse_table")
  record = {"format": _FORMAT, "version": _VERSION, "num_codes": int(labels.size),
            "num_clusters": int(num_clusters), "balanced": bool(balanced), "seed": int(seed),
            "inertia": float(inertia), "labels": labels.tolist()}
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, COARSE_TABLE_FILE)
  # Readers never see a half-written table: write beside it, then rename.
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(record, f)
  os.replace(path + ".tmp", path)
  return path


def load_coarse_table(folder: str, num_codes: int | None = None) -> CoarseTable:
  """Reads ``folder/coarse_table.json``.

  Args:
    folder: the folder of the pre-encoded token records.
    num_codes: if given, the codebook size K the table must cover.

  Returns:
    The ``CoarseTable``.
  """
  path = os.path.join(folder, COARSE_TABLE_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No coarse table at {path}. Build it while encoding the tokens: "
        f"python -m vqd_jax.encode ... --coarse-clusters C (C clusters of the codebook).")
  with open(path, encoding="utf-8") as f:
    try:
      record = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); rebuild it with --coarse-clusters.") from e
  if not isinstance(record, dict) or record.get("format") != _FORMAT:
    raise ValueError(f"{path} is not a coarse table (format field must be {_FORMAT!r}).")
  if record.get("version") != _VERSION:
    raise ValueError(f"{path} has version {record.get('version')!r}; this reader knows version "
                     f"{_VERSION}. Rebuild it with --coarse-clusters.")
  try:
    labels = _checked_labels(np.asarray(record["labels"]), int(record["num_clusters"]), path)
    expected = int(record["num_codes"])
  except KeyError as e:
    raise ValueError(f"{path} lacks the field {e}; rebuild it with --coarse-clusters.") from e
  for want, what in ((expected, "its num_codes field"), (num_codes, "the codebook")):
    if want is not None and labels.size != want:
      raise ValueError(f"{path} has {labels.size} labels but {what} has {want} codes; rebuild the "
                       f"table for this codebook with --coarse-clusters.")
  return CoarseTable(labels=labels, num_clusters=int(record["num_clusters"]),
                     balanced=bool(record.get("balanced", False)), seed=int(record.get("seed", 0)))


def coarse_labels(table_labels, tokens):
  """The table applied to fine tokens: ``labels[tokens]``, ``[..., N]`` from ``[..., N]``.

  Args:
    table_labels: ``[K]`` numpy or jax array, the code -> cluster table.
    tokens: ``[..., N]`` integer codes in ``[0, K)``.

  Returns:
    ``[..., N]`` coarse labels; a jax array when either input is one (jax clamps out-of-range
    codes, numpy raises IndexError).
  """
  if isinstance(table_labels, jax.Array) or isinstance(tokens, jax.Array):
    return jnp.asarray(table_labels)[jnp.asarray(tokens)]
  return np.asarray(table_labels)[np.asarray(tokens)]


def cluster_members(labels, num_clusters: int) -> np.ndarray:
  """``[C, K]`` bool mask: row c is True exactly at the codes of cluster c."""
  labels = _checked_labels(labels, num_clusters, "cluster_members")
  return labels[None, :] == np.arange(int(num_clusters), dtype=np.int32)[:, None]
