"""Per-step shaping of the model's log p(x0 | x_t) before sampling: guidance, truncation, floor.

Order (official ``cf_predict_start`` + ``predict_start_with_truncation`` and the diffusers pipeline):
classifier-free guidance, renormalise, truncate to the top-r probability mass, clamp at -70.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vqd_jax.diffusion.logspace import LOG_FLOOR

# Guidance scales this close to 1 are treated as "no guidance" (official code: |s - 1| < 1e-3).
GUIDANCE_EPS = 1e-3


def uses_guidance(guidance_scale: float) -> bool:
  """Whether ``guidance_scale`` asks for classifier-free guidance (a static Python decision)."""
  return abs(float(guidance_scale) - 1.0) >= GUIDANCE_EPS


def classifier_free_guidance(log_uncond: jax.Array, log_cond: jax.Array,
                             guidance_scale: float | jax.Array) -> jax.Array:
  """``g = lu + s·(lc - lu)``, renormalised over the last axis. ``[..., K]`` each -> ``[..., K]``.

  The code's ``s`` is the paper's ``s' + 1`` (paper: log p(x|y) <- log p(x) + (s'+1)(...)).
  """
  guided = log_uncond + guidance_scale * (log_cond - log_uncond)
  return guided - jax.nn.logsumexp(guided, axis=-1, keepdims=True)


def truncate(log_p: jax.Array, truncation_rate: float) -> jax.Array:
  """Keeps the most probable classes whose mass stays below ``r``; the rest go to ``LOG_FLOOR``.

  Per token, classes are ranked by probability; a class is kept when the mass of the classes
  ranked strictly above it is < r, so the most probable class is always kept. No renormalisation
  (the posterior's normaliser handles the scale), as in the public code. ``[..., K]`` -> same.

  Kept classes are selected by a threshold on the sorted values instead of scattering a mask back
  through the sort permutation; the two differ only when a class ties exactly with the last kept
  one, which is then kept too.
  """
  descending = -jnp.sort(-log_p, axis=-1)
  mass_above = jnp.cumsum(jnp.exp(descending), axis=-1)[..., :-1]
  num_kept = 1 + jnp.sum(mass_above < truncation_rate, axis=-1, keepdims=True)
  threshold = jnp.take_along_axis(descending, num_kept - 1, axis=-1)
  return jnp.where(log_p >= threshold, log_p, LOG_FLOOR)


def prepare_log_x0(model_output: jax.Array, *, guidance_scale: float = 1.0,
                   truncation_rate: float = 1.0) -> jax.Array:
  """Turns one denoiser output into the log p̂(x0) the samplers draw from.

  Args:
    model_output: ``[B, N, K]`` log p(x0 | x_t); with guidance ``[2B, N, K]`` whose rows ``[:B]``
      are conditioned on the null embedding and rows ``[B:]`` on the prompt.
    guidance_scale: s; 1 disables guidance.
    truncation_rate: r; values >= 1 disable truncation. (The public code truncates even at
      r = 1, which drops classes once the float32 cumulative sum rounds to 1; we do not.)

  Returns:
    ``[B, N, K]`` float32 log-probabilities, clamped at -70.
  """
  log_p = model_output.astype(jnp.float32)
  if uses_guidance(guidance_scale):
    half = log_p.shape[0] // 2
    log_p = classifier_free_guidance(log_p[:half], log_p[half:], guidance_scale)
  if truncation_rate < 1.0:
    log_p = truncate(log_p, truncation_rate)
  return jnp.maximum(log_p, LOG_FLOOR)
