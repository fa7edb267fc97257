"""User-facing sampling settings -> ``SamplerConfig``, and pixel masks -> token masks.

Shared by ``VQDiffusionPipeline`` and ``python -m vqd_jax.sample``, so both apply the same rules
(step counts, editing vs inpainting, mask thresholds) with the same messages.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vqd_jax import diffusion


def sampler_config(num_timesteps: int, num_inference_steps: int | None = None,
                   guidance_scale: float = 5.0, truncation_rate: float = 1.0,
                   purity_weight: float | None = None, start_t: int | None = None,
                   start_from: str = "mask") -> diffusion.SamplerConfig:
  """The ``SamplerConfig`` of these settings; steps scale with ``start_t`` (None: one per step).

  Starting at ``start_t`` keeps the same step density: ``num_inference_steps`` calls over the
  whole chain become ``ceil(num_inference_steps · (start_t + 1) / T)`` calls from ``start_t``.
  """
  steps = num_timesteps if num_inference_steps is None else int(num_inference_steps)
  if steps < 1 or (steps > num_timesteps and purity_weight is None):
    raise ValueError(f"num_inference_steps must be in [1, T = {num_timesteps}] for the posterior "
                     f"sampler (the purity sampler may use more), got {steps}.")
  if start_t is not None:
    if not 0 <= int(start_t) < num_timesteps:
      raise ValueError(f"start_t must lie in [0, {num_timesteps - 1}], got {start_t}.")
    steps = max(1, math.ceil(steps * (int(start_t) + 1) / num_timesteps))
  return diffusion.SamplerConfig(
      num_steps=steps, truncation_rate=float(truncation_rate),
      guidance_scale=float(guidance_scale),
      purity_weight=None if purity_weight is None else float(purity_weight),
      start_t=None if start_t is None else int(start_t), start_from=start_from)


def settings_for_call(num_timesteps: int, num_inference_steps: int | None, guidance_scale: float,
                      truncation_rate: float, purity_weight: float | None, start_t: int | None,
                      *, has_init_image: bool, has_mask: bool) -> diffusion.SamplerConfig:
  """``sampler_config`` with the editing / inpainting rules applied.

  Without a mask an init image is regenerated whole from a noised copy of it (editing, needs
  ``start_t``); with one, the masked tokens restart from [MASK] (inpainting).
  """
  if has_mask and not has_init_image:
    raise ValueError("inpaint_mask needs init_image: the image whose unmasked part is kept.")
  if has_init_image and not has_mask and start_t is None:
    raise ValueError("Editing an init_image without inpaint_mask needs start_t (how much noise "
                     "to add, 0..T-1); or pass inpaint_mask to regenerate part of it.")
  start_from = "noise" if has_init_image and not has_mask else "mask"
  return sampler_config(num_timesteps, num_inference_steps, guidance_scale, truncation_rate,
                        purity_weight, start_t, start_from)


def token_mask(mask: Any, batch_size: int, token_grid: tuple[int, int], downsample_factor: int
               ) -> np.ndarray:
  """A pixel mask ``[H, W]`` / ``[B, H, W]`` (True or > 0.5 = regenerate) -> ``[B, N]`` bool.

  A token is regenerated when any pixel of its ``f x f`` patch is masked. A mask already at the
  token grid (``[h, w]`` / ``[B, h, w]``) is used as it is; an image read as ``[H, W, C]`` uses
  its first channel; uint8 masks threshold at 127.
  """
  (h, w), f = token_grid, downsample_factor
  big_h, big_w = h * f, w * f
  mask = np.asarray(mask)
  if mask.ndim == 3 and mask.shape[-1] in (1, 3, 4) and mask.shape[:2] == (big_h, big_w):
    mask = mask[..., 0]
  if mask.dtype != bool:
    mask = mask > (127 if mask.dtype == np.uint8 else 0.5)
  mask = mask[None] if mask.ndim == 2 else mask
  if mask.ndim != 3 or mask.shape[1:] not in ((h, w), (big_h, big_w)):
    raise ValueError(f"inpaint_mask must be [H, W] = {(big_h, big_w)} pixels or [h, w] = {(h, w)} "
                     f"tokens (optionally with a batch axis), got shape {mask.shape}.")
  if mask.shape[1:] == (big_h, big_w):
    mask = mask.reshape(mask.shape[0], h, f, w, f).any(axis=(2, 4))
  mask = np.broadcast_to(mask, (batch_size, h, w)) if mask.shape[0] == 1 else mask
  if mask.shape[0] != batch_size:
    raise ValueError(f"inpaint_mask has {mask.shape[0]} masks for {batch_size} images.")
  return mask.reshape(batch_size, h * w)
