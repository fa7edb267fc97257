"""CTF: coarse-to-fine token prediction over a frozen VQ autoencoder's codebook.

Pure library: imports nothing from ``vqd_jax.training``, ``vqd_jax.data`` or the command lines.
The K codebook vectors are grouped into C clusters by k-means; a code's cluster is its coarse
label. Stage 1 predicts the map of coarse labels; stage 2 predicts the fine codes from the whole
coarse map, each position restricted to the codes of its cluster.

* ``clustering``: ``kmeans``, plain (k-means++ and Lloyd) or balanced (exactly K / C codes per cluster) clustering,
  returning a ``KMeansResult`` with the code -> cluster table.
* ``coarse``: the table saved beside pre-encoded token records (``save_coarse_table`` /
  ``load_coarse_table``), ``coarse_labels`` (table applied to tokens) and ``cluster_members``
  (``[C, K]`` membership mask).
* ``fine``: the second stage's draw, ``sample_fine`` (τ₂, top-k, guidance, each position
  restricted to its cluster's codes: ``restrict_to_clusters``). The fine predictor itself is
  ``vqd_jax.autoregressive.ARTransformer(causal=False)``.
"""

from vqd_jax.ctf.coarse import COARSE_TABLE_FILE
from vqd_jax.ctf.coarse import CoarseTable
from vqd_jax.ctf.coarse import cluster_members
from vqd_jax.ctf.coarse import coarse_labels
from vqd_jax.ctf.coarse import load_coarse_table
from vqd_jax.ctf.coarse import save_coarse_table
from vqd_jax.ctf.clustering import KMeansResult
from vqd_jax.ctf.clustering import kmeans
from vqd_jax.ctf.fine import FineSamplerConfig, restrict_to_clusters, sample_fine

__all__ = [
    "COARSE_TABLE_FILE",
    "CoarseTable",
    "FineSamplerConfig",
    "KMeansResult",
    "cluster_members",
    "coarse_labels",
    "kmeans",
    "load_coarse_table",
    "restrict_to_clusters",
    "sample_fine",
    "save_coarse_table",
]
