"""CTF's second stage: the fine predictor, trained on the ground-truth coarse labels.

Input: the coarse labels of every position (the run's code -> cluster table applied to the data's
codes); output: every position's code in one bidirectional pass, conditioned on the caption. With
``config.ctf.restrict`` the distribution is renormalised over each position's cluster, the same
way sampling draws from it. Trained independently of the first stage (``configs/ctf.py``).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import ml_collections

from vqd_jax import autoregressive, build, ctf
from vqd_jax.training.ar_task import ARTask

log = logging.getLogger(__name__)


class FineTask(ARTask):
  """The fine predictor's stage: ``ARTask``'s loss with the coarse map as input (module
  docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    if config.get("ctf") is None or not config.ctf.num_clusters:
      raise ValueError("The ctf_fine stage needs config.ctf.num_clusters > 0 (configs/ctf.py).")
    super().__init__(config, workdir)
    self.members = jnp.asarray(ctf.cluster_members(self.coarse.labels, self.coarse.num_clusters))

  @property
  def predicts_coarse(self) -> bool:
    return False  # it reads the coarse labels and predicts the codes

  def build_model(self) -> autoregressive.ARTransformer:
    return build.ar_model(self.config, self.vq.num_codes, self.grid, self.conditioner.width,
                          input_classes=self.coarse.num_clusters)

  def inputs_and_targets(self, batch) -> tuple[jax.Array, jax.Array]:
    codes = self._tokens(batch)
    return ctf.coarse_labels(jnp.asarray(self.coarse.labels), codes), codes

  def log_probs(self, transformer_params, inputs, cond, **kwargs):
    """``[B, N, K]`` log p(code | coarse map, text), restricted when ``config.ctf.restrict``."""
    log_p = super().log_probs(transformer_params, inputs, cond, **kwargs)
    if self.config.ctf.restrict:
      log_p = ctf.restrict_to_clusters(log_p, inputs, self.members)
    return log_p

  def write_previews(self, state, step: int, writer, directory: str) -> None:
    del state, writer, directory
    if step == self.config.train.sample_every:  # said once
      log.info("The fine stage alone draws no images: sample it with its first stage, "
               "python -m vqd_jax.sample --workdir FINE_RUN --coarse-workdir COARSE_RUN.")
