"""Codebook maintenance, as pure jittable functions: EMA, init from encoder outputs, dead-code restart.

A naive VQ-VAE on small data collapses onto a few codes, washes out colours and drops small objects.
Three remedies, run by the trainer after each optimizer step (:func:`maintain_codebook`):

1. a plain-autoencoder warm-up (the quantizer is bypassed) so the encoder first learns useful
   latents; at its end the codebook is initialised from them by k-means++ seeding plus a few Lloyd
   iterations, so every code starts where latents actually are;
2. optional EMA codebook updates (cluster means) instead of codebook-loss gradients;
3. codes whose usage EMA falls below ``threshold / K`` are restarted on current encoder outputs,
   sampled in proportion to their squared quantization error: the worst-represented latents (rare
   colours, object edges) get codes first, not the ubiquitous black background.

:func:`prune_codebook` drops unused codes after training (the public COCO model keeps 2,887 of 8,192).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.vqvae.quantizer import code_counts, nearest_codes

_TINY = 1e-30


def _sample_proportional(key: jax.Array, samples: jax.Array, weights: jax.Array, n: int
                         ) -> jax.Array:
  """``n`` rows of ``samples`` ``[N, D]`` drawn with replacement with probability ~ ``weights``.

  Inverse-CDF sampling, O(N + n log N): a Gumbel-max draw would cost ``n * N`` random numbers every
  step. All-zero weights fall back to uniform sampling.
  """
  weights = jnp.maximum(weights.astype(jnp.float32), 0.0)
  weights = jnp.where(jnp.sum(weights) > 0, weights, jnp.ones_like(weights))
  cdf = jnp.cumsum(weights)
  u = jax.random.uniform(key, (n,), jnp.float32) * cdf[-1]
  idx = jnp.minimum(jnp.searchsorted(cdf, u, side="right"), samples.shape[0] - 1)
  return samples[idx]


def kmeans_init(key: jax.Array, samples: jax.Array, num_codes: int, lloyd_iterations: int = 0
                ) -> jax.Array:
  """k-means++ seeding of ``num_codes`` centres from ``samples`` ``[N, D]``, then Lloyd steps.

  Returns ``[K, D]`` float32. When there are fewer distinct samples than codes, the surplus codes
  duplicate samples (dead-code restart later moves them).
  """
  samples = samples.astype(jnp.float32)
  n, d = samples.shape
  key, first_key = jax.random.split(key)
  first = samples[jax.random.randint(first_key, (), 0, n)]
  centres = jnp.zeros((num_codes, d), jnp.float32).at[0].set(first)
  min_d2 = jnp.sum((samples - first) ** 2, axis=1)

  def seed(i, carry):
    centres, min_d2 = carry
    pick = _sample_proportional(jax.random.fold_in(key, i), samples, min_d2, 1)[0]
    min_d2 = jnp.minimum(min_d2, jnp.sum((samples - pick) ** 2, axis=1))
    return centres.at[i].set(pick), min_d2

  centres, _ = jax.lax.fori_loop(1, num_codes, seed, (centres, min_d2))

  def lloyd(_, centres):
    idx, _ = nearest_codes(samples, centres)
    counts = code_counts(idx, num_codes)
    sums = jax.ops.segment_sum(samples, idx, num_codes)
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where(counts[:, None] > 0, means, centres)  # empty clusters keep their seed

  return jax.lax.fori_loop(0, lloyd_iterations, lloyd, centres)


def codebook_from_ema(ema_count: jax.Array, ema_sum: jax.Array, epsilon: float = 1e-5
                      ) -> jax.Array:
  """Cluster means ``ema_sum / n`` with Laplace-smoothed counts (no division by zero): ``[K, D]``."""
  total = jnp.sum(ema_count)
  k = ema_count.shape[0]
  smoothed = (ema_count + epsilon) / (total + k * epsilon) * total
  return ema_sum / smoothed[:, None]


def dead_codes(usage: jax.Array, threshold: float) -> jax.Array:
  """bool ``[K]``: codes whose usage EMA is below ``threshold`` times the uniform share ``1/K``."""
  return usage < threshold / usage.shape[0]


def restart_dead_codes(key: jax.Array, codebook: jax.Array, usage: jax.Array, samples: jax.Array,
                       squared_error: jax.Array, threshold: float
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Moves every dead code onto a current encoder output.

  Args:
    codebook: ``[K, D]``.
    usage: ``[K]`` usage EMA (fractions of assigned vectors).
    samples: ``[N, D]`` encoder outputs of the current batch.
    squared_error: ``[N]`` their squared distance to their code (restart sampling weights).
    threshold: see :func:`dead_codes`.

  Returns:
    ``(codebook, usage, dead)``: restarted codes get usage ``1/K`` (a grace period before they can
    be restarted again); live codes are untouched.
  """
  k = codebook.shape[0]
  dead = dead_codes(usage, threshold)
  picks = _sample_proportional(key, samples.astype(codebook.dtype), squared_error, k)
  codebook = jnp.where(dead[:, None], picks, codebook)
  usage = jnp.where(dead, 1.0 / k, usage)
  return codebook, usage, dead


@dataclasses.dataclass(frozen=True)
class CodebookSettings:
  """How :func:`maintain_codebook` treats the codebook.

  Attributes:
    warmup_steps: plain-autoencoder steps; the codebook is initialised at the end of the last one
      (0: keep the random initialisation).
    kmeans_iterations: Lloyd iterations after k-means++ seeding at initialisation.
    use_ema: rebuild the codebook from the EMA statistics every step.
    ema_epsilon: Laplace smoothing of the EMA counts.
    dead_code_threshold: restart codes used less than this fraction of ``1/K`` (0: never).
  """
  warmup_steps: int = 0
  kmeans_iterations: int = 3
  use_ema: bool = False
  ema_epsilon: float = 1e-5
  dead_code_threshold: float = 0.0


def maintain_codebook(key: jax.Array, step: jax.Array, codebook: jax.Array,
                      stats: Mapping[str, jax.Array], samples: jax.Array,
                      squared_error: jax.Array, settings: CodebookSettings
                      ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
  """One step of codebook upkeep after the optimizer update of step ``step`` (jittable).

  Args:
    step: the step just taken (0-based).
    codebook: ``[K, D]`` after the optimizer update.
    stats: the quantizer's ``'vq_stats'`` after this step's forward pass (``usage``, and
      ``ema_count``/``ema_sum`` with EMA).
    samples, squared_error: this step's flattened encoder outputs ``[N, D]`` and their errors ``[N]``.

  Returns:
    ``(codebook, stats, metrics)`` with ``metrics["dead_codes"]``, the number restarted.
  """
  k = codebook.shape[0]
  n = samples.shape[0]
  stats = dict(stats)
  dtype = codebook.dtype
  init_key, restart_key = jax.random.split(key)
  vq_active = step >= settings.warmup_steps

  def reset_stats(stats, codebook, which):
    """Statistics of a code that was just (re)placed: uniform usage, an EMA of one average batch."""
    out = dict(stats)
    out["usage"] = jnp.where(which, 1.0 / k, stats["usage"])
    if settings.use_ema:
      count = n / k
      out["ema_count"] = jnp.where(which, count, stats["ema_count"])
      out["ema_sum"] = jnp.where(which[:, None], codebook.astype(jnp.float32) * count,
                                 stats["ema_sum"])
    return out

  if settings.warmup_steps > 0:
    def initialise(codebook, stats):
      codebook = kmeans_init(init_key, samples, k, settings.kmeans_iterations).astype(dtype)
      return codebook, reset_stats(stats, codebook, jnp.ones((k,), bool))

    codebook, stats = jax.lax.cond(step + 1 == settings.warmup_steps, initialise,
                                   lambda c, s: (c, s), codebook, stats)

  if settings.use_ema:
    ema = codebook_from_ema(stats["ema_count"], stats["ema_sum"], settings.ema_epsilon)
    codebook = jnp.where(vq_active, ema.astype(dtype), codebook)

  num_dead = jnp.zeros((), jnp.int32)
  if settings.dead_code_threshold > 0:
    restarted, _, dead = restart_dead_codes(restart_key, codebook, stats["usage"], samples,
                                            squared_error, settings.dead_code_threshold)
    dead = dead & vq_active
    codebook = jnp.where(dead[:, None], restarted, codebook)
    stats = reset_stats(stats, codebook, dead)
    num_dead = jnp.sum(dead).astype(jnp.int32)
  return codebook, stats, {"dead_codes": num_dead}


def prune_codebook(params: Mapping[str, Any], used: Any
                   ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
  """Keeps only the ``used`` codes of ``params["quantize"]["embedding"]``, in their original order.

  Args:
    params: autoencoder params (plain arrays).
    used: bool ``[K]`` mask, or the code indices to keep.

  Returns:
    ``(params, old_to_new, new_to_old)``: ``old_to_new`` int32 ``[K]`` maps old codes to new ones
    (-1 for dropped codes); ``new_to_old`` int32 ``[K']``. Decoding ``old_to_new[c]`` with the new
    params equals decoding ``c`` with the old ones for every kept ``c``.
  """
  codebook = np.asarray(params["quantize"]["embedding"])
  k = codebook.shape[0]
  used = np.asarray(used)
  if used.dtype == bool:
    if used.shape != (k,):
      raise ValueError(f"used mask has shape {used.shape}, expected ({k},).")
    new_to_old = np.flatnonzero(used).astype(np.int32)
  else:
    new_to_old = np.unique(used.astype(np.int64)).astype(np.int32)
    if new_to_old.size and (new_to_old[0] < 0 or new_to_old[-1] >= k):
      raise ValueError(f"used indices must lie in [0, {k}), got range "
                       f"[{new_to_old[0]}, {new_to_old[-1]}].")
  if new_to_old.size == 0:
    raise ValueError("prune_codebook: no code is marked used; count usage on real data first.")
  old_to_new = np.full((k,), -1, np.int32)
  old_to_new[new_to_old] = np.arange(new_to_old.size, dtype=np.int32)
  quantize = dict(params["quantize"], embedding=jnp.asarray(codebook[new_to_old]))
  return dict(params, quantize=quantize), old_to_new, new_to_old


def prune_vq_stats(stats: Mapping[str, Any], new_to_old: np.ndarray) -> dict[str, Any]:
  """The ``'vq_stats'`` of the quantizer restricted to ``new_to_old`` (see :func:`prune_codebook`).

  ``usage`` is renormalised to sum to 1 over the kept codes.
  """
  quantize = {name: jnp.asarray(np.asarray(value)[new_to_old])
              for name, value in stats["quantize"].items()}
  quantize["usage"] = quantize["usage"] / jnp.maximum(jnp.sum(quantize["usage"]), _TINY)
  return dict(stats, quantize=quantize)
