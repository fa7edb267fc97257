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
from vqd_jax.training.ar_task import token_cross_entropy
from vqd_jax.training.token_task import TokenModelTask

log = logging.getLogger(__name__)


class FineTask(TokenModelTask):
  """The fine predictor's stage (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    if config.get("ctf") is None or not config.ctf.num_clusters:
      raise ValueError("The ctf_fine stage needs config.ctf.num_clusters > 0 (configs/ctf.py).")
    super().__init__(config, workdir)
    self.members = jnp.asarray(ctf.cluster_members(self.coarse.labels, self.coarse.num_clusters))

  @property
  def predicts_coarse(self) -> bool:
    return False  # it reads the coarse labels and predicts the codes

  @property
  def num_tokens(self) -> int:
    return self.model.num_tokens

  def build_model(self) -> autoregressive.ARTransformer:
    return build.ar_model(self.config, self.vq.num_codes, self.grid, self.conditioner.width,
                          input_classes=self.coarse.num_clusters)

  def init_model(self, key, states, mask):
    coarse = jnp.zeros((states.shape[0], self.model.num_tokens), jnp.int32)
    return self.model.init(key, coarse, states, mask)["params"]

  def fine_log_probs(self, transformer_params, coarse, cond, **kwargs):
    """``[B, N, K]`` log p(code | coarse map, text), restricted when ``config.ctf.restrict``."""
    log_p = self.model.apply({"params": transformer_params}, coarse, cond.states, cond.mask,
                             **kwargs)
    if self.config.ctf.restrict:
      log_p = ctf.restrict_to_clusters(log_p, coarse, self.members)
    return log_p

  def step_loss(self, params, batch, key, extra, step):
    del extra, step
    k_drop, k_dropout = jax.random.split(key)
    codes = self._tokens(batch)
    coarse = ctf.coarse_labels(jnp.asarray(self.coarse.labels), codes)
    cond = self.conditioning(params, batch, k_drop)
    dropout = self.config.model.dropout > 0
    log_p = self.fine_log_probs(params["transformer"], coarse, cond, deterministic=not dropout,
                                rngs={"dropout": k_dropout} if dropout else None)
    loss, metrics = token_cross_entropy(log_p, codes)
    return loss, (metrics, None)

  def write_previews(self, state, step: int, writer, directory: str) -> None:
    del state, writer, directory
    if step == self.config.train.sample_every:  # said once
      log.info("The fine stage alone draws no images: sample it with its first stage, "
               "python -m vqd_jax.sample --workdir FINE_RUN --coarse-workdir COARSE_RUN.")
