"""User-facing sampling settings -> ``SamplerConfig``, user images and masks -> model inputs,
and notes on prompts the text encoder cannot fully read.

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
  if not (math.isfinite(float(truncation_rate)) and 0 < float(truncation_rate) <= 1):
    raise ValueError(f"truncation_rate must lie in (0, 1] (1 = off), got {truncation_rate}.")
  if not math.isfinite(float(guidance_scale)):
    raise ValueError(f"guidance_scale must be a finite number (1 = off), got {guidance_scale}.")
  if purity_weight is not None and not math.isfinite(float(purity_weight)):
    raise ValueError(f"purity_weight must be a finite number or None, got {purity_weight}.")
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
  its first channel; uint8 masks threshold at 127. A mask with nothing to regenerate is an error.
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
  if not mask.any():
    raise ValueError("inpaint_mask marks nothing to regenerate (no pixel above half, i.e. "
                     "white / True): the image would come back unchanged.")
  return mask.reshape(batch_size, h * w)


def fit_image(image: Any, size: tuple[int, int], mask: bool = False) -> np.ndarray:
  """A user's PIL image at the model's ``size`` (H, W): an init image as uint8 ``[H, W, 3]``
  (transparent pixels white, bicubic), or a ``mask`` as uint8 ``[H, W]`` grey levels (transparent
  pixels black, nearest neighbour, so white stays white)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from vqd_jax import images  # pylint: disable=import-outside-toplevel
  image = images.on_background(image, (0, 0, 0) if mask else (255, 255, 255))
  image = image.convert("L") if mask else image
  if image.size != (size[1], size[0]):
    image = image.resize((size[1], size[0]), Image.NEAREST if mask else Image.BICUBIC)
  return np.asarray(image, np.uint8)


def prompt_notes(tokenizer: Any, prompts: list[str]) -> list[str]:
  """Notes on what the text encoder will not read: unknown words, truncated prompts and prompts
  with no token at all (a word tokenizer reads no emoji or symbols)."""
  notes = []
  unknown = tokenizer.unknown_words(prompts) if hasattr(tokenizer, "unknown_words") else []
  if unknown:
    shown = ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else "")
    notes.append(f"Note: the model's tokenizer does not know {shown}; they read as [UNK].")
  cut = tokenizer.truncated(prompts) if hasattr(tokenizer, "truncated") else []
  if cut:
    notes.append(f"Note: {len(cut)} prompt(s) (the first: number {cut[0] + 1}) are longer than "
                 f"the text encoder's {tokenizer.max_length} tokens; the rest is truncated.")
  ids, mask = tokenizer(list(prompts))
  content = mask & ~np.isin(ids, [tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id])
  blank = [i for i, row in enumerate(content) if not row.any() and prompts[i]]
  if blank:
    notes.append(f"Note: prompt number {blank[0] + 1} has no words the tokenizer reads; it "
                 "samples like an empty prompt.")
  return notes
