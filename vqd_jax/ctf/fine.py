"""CTF's second stage: every position's fine code from the whole coarse map, in one pass.

The fine predictor is ``ARTransformer(causal=False, input_classes=C)``: a bidirectional,
text-conditioned transformer from the ``[B, N]`` coarse labels to ``[B, N, K]`` log-probabilities
of the codes. With ``restrict`` it only ever puts mass on the codes of each position's cluster
(renormalised there), in training and sampling alike.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vqd_jax.autoregressive.sampling import filter_logits, guided_log_probs


def restrict_to_clusters(log_p: jax.Array, coarse: jax.Array, members: jax.Array) -> jax.Array:
  """``log_p [B, N, K]`` renormalised over the codes of each position's cluster.

  Args:
    log_p: log-probabilities (or logits) of the K codes.
    coarse: ``[B, N]`` int cluster of every position.
    members: ``[C, K]`` bool, row c True for the codes of cluster c.

  Returns:
    ``[B, N, K]`` log-probabilities, −inf outside each position's cluster.
  """
  allowed = jnp.take(members, coarse, axis=0)
  return jax.nn.log_softmax(jnp.where(allowed, log_p, -jnp.inf), axis=-1)


@dataclasses.dataclass(frozen=True)
class FineSamplerConfig:
  """How stage 2 draws the fine codes (hashable: a static argument of jitted programs).

  Attributes:
    temperature: τ₂, logits divided by it (CTF's final recipe: 1.1).
    top_k: keep the k most likely codes per position (0 = all: CTF's recipe; 1 = argmax).
    guidance_scale: classifier-free guidance of the fine predictor (1 = off; CTF does not say).
  """
  temperature: float = 1.1
  top_k: int = 0
  guidance_scale: float = 1.0

  def __post_init__(self):
    if not (self.temperature > 0 and self.temperature < float("inf")):
      raise ValueError(f"fine temperature must be a finite number > 0, got {self.temperature}.")
    if int(self.top_k) != self.top_k or self.top_k < 0:
      raise ValueError(f"fine top_k must be an integer >= 0 (0 keeps every code), got "
                       f"{self.top_k}.")
    if not self.guidance_scale == self.guidance_scale or self.guidance_scale < 0:
      raise ValueError(f"fine guidance_scale must be a number >= 0, got {self.guidance_scale}.")

  @property
  def guided(self) -> bool:
    return self.guidance_scale != 1.0


def sample_fine(log_p: jax.Array, coarse: jax.Array, key: jax.Array, settings: FineSamplerConfig,
                members: jax.Array | None = None) -> jax.Array:
  """Fine codes ``[B, N]`` int32, every position drawn at once.

  Args:
    log_p: ``[B, N, K]`` the fine predictor's output, or ``[2B, N, K]`` rows ``[null, cond]``
      with guidance.
    coarse: ``[B, N]`` the coarse labels it was given.
    key: PRNG key.
    settings: temperature, top-k, guidance.
    members: ``[C, K]`` cluster membership to restrict each position to its cluster's codes, or
      None to draw from every code.
  """
  if settings.guided:
    log_p = guided_log_probs(log_p, settings.guidance_scale)
  if members is not None:
    log_p = restrict_to_clusters(log_p, coarse, members)
  logits = filter_logits(log_p, settings.temperature, settings.top_k)
  return jax.random.categorical(key, logits).astype(jnp.int32)
