"""The code -> cluster table of a CTF stage's run (``config.ctf``), and coarse previews.

A run keeps its own copy (``WORKDIR/coarse_table.json``) so that it travels: at the first start it
is the token folder's table (``python -m vqd_jax.encode ... --coarse-clusters C``) when the run
trains on token records, else k-means of the frozen autoencoder's codebook with the config's
settings (seeded: every stage computes the same table). A table that does not match the config
is an error, never silently replaced.
"""

from __future__ import annotations

import logging
import os
import shutil

import jax
import ml_collections
import numpy as np

from vqd_jax import ctf
from vqd_jax.inference.autoencoder import FrozenAutoencoder

log = logging.getLogger(__name__)


def _check(table: ctf.CoarseTable, cfg: ml_collections.ConfigDict, num_codes: int,
           where: str) -> ctf.CoarseTable:
  want = (num_codes, int(cfg.num_clusters), bool(cfg.balanced), int(cfg.seed))
  have = (len(table.labels), table.num_clusters, table.balanced, table.seed)
  if want != have:
    raise ValueError(
        f"The coarse table in {where} has (codes, clusters, balanced, seed) = {have}, the run "
        f"needs {want} (config.ctf and the autoencoder). Point the run at matching token "
        "records, or re-encode them with python -m vqd_jax.encode --coarse-clusters "
        f"{cfg.num_clusters}{' --coarse-balanced' if cfg.balanced else ''} "
        f"--coarse-seed {cfg.seed}.")
  return table


def run_coarse_table(config: ml_collections.ConfigDict, workdir: str,
                     vq: FrozenAutoencoder) -> ctf.CoarseTable:
  """The run's table: its own copy, else the token folder's, else computed (module docstring)."""
  cfg = config.ctf
  if os.path.exists(os.path.join(workdir, ctf.COARSE_TABLE_FILE)):
    return _check(ctf.load_coarse_table(workdir), cfg, vq.num_codes, workdir)
  data = config.data
  target = os.path.join(workdir, ctf.COARSE_TABLE_FILE)
  if data.source == "tokens" and os.path.exists(os.path.join(data.path, ctf.COARSE_TABLE_FILE)):
    table = _check(ctf.load_coarse_table(data.path), cfg, vq.num_codes, data.path)
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      shutil.copyfile(os.path.join(data.path, ctf.COARSE_TABLE_FILE), target + ".tmp")
      os.replace(target + ".tmp", target)
    return table
  result = ctf.kmeans(vq.codebook, int(cfg.num_clusters), seed=int(cfg.seed),
                      balanced=bool(cfg.balanced))
  log.info("Clustered the %d codes into %d coarse labels (inertia %.4g).", vq.num_codes,
           cfg.num_clusters, result.inertia)
  if jax.process_index() == 0:
    ctf.save_coarse_table(workdir, result.labels, num_clusters=int(cfg.num_clusters),
                          balanced=bool(cfg.balanced), seed=int(cfg.seed),
                          inertia=result.inertia)
  return ctf.CoarseTable(labels=np.asarray(result.labels, np.int32),
                         num_clusters=int(cfg.num_clusters), balanced=bool(cfg.balanced),
                         seed=int(cfg.seed))


def representative_codes(vectors: np.ndarray, labels: np.ndarray, num_clusters: int
                         ) -> np.ndarray:
  """``[C]`` int32: per cluster, the member code nearest the members' mean (to draw a coarse map
  as an image: each label shown as its most typical code)."""
  out = np.zeros(num_clusters, np.int32)
  for c in range(num_clusters):
    members = np.flatnonzero(labels == c)
    if members.size == 0:
      continue
    mean = vectors[members].mean(0)
    out[c] = members[np.argmin(((vectors[members] - mean) ** 2).sum(-1))]
  return out
