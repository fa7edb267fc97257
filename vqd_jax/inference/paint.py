"""Paint-with-words: where each phrase of a prompt should appear, as cross-attention weights.

eDiff-I's training-free layout control carried over to the token denoiser. A user paints a mask per
phrase; the mask is averaged by area onto the token grid; every text token of the phrase (all
occurrences in the prompt) gets ``mask − outside · (1 − mask)`` as its column of a ``[N, L]`` weight
map: drawn towards the painted region and, beyond eDiff-I's rule (``outside=0``), away from the
rest of the image, which moved more objects into their boxes at a smaller cost in quality
(docs/experiments.md, 2026-12-05). The sampler adds
``weight · f(t) · max(QKᵀ/√d) · map`` to the cross-attention logits of every block, in the
conditional rows only (``vqd_jax.inference.generate.paint_bias``; the null rows of guidance get
none), so it costs no extra forward pass. Paint a phrase as the prompt spells it, article
included: the text encoder spreads the object into every word, and positions pushed off
"large red circle" read it from an unpainted "a" (docs/experiments.md, 2026-12-06).

Classifier-free guidance runs at the sampler's scale where a mask is painted and at
``unpainted_guidance`` (default 1: none) elsewhere (``guidance_scales``): guidance multiplies the
prompt's objects wherever some of their probability is left, and outside the boxes that pulled
objects out of place (docs/experiments.md, 2026-12-06).

  weights = paint_weights(tokenizer, prompts, {"a large red circle": "mask.png"}, 8, 8, weight=0.5)
  cond = cond.replace(paint=jnp.asarray(weights))              # [B, N, L]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
from PIL import Image

from vqd_jax import images as images_lib

# Measured best on the quickstart run (docs/experiments.md, 2026-12-05); a model's own best varies.
DEFAULT_PAINT_WEIGHT = 0.5
# The phrase's pull away from unpainted positions, relative to its pull into the mask (0: eDiff-I).
DEFAULT_PAINT_OUTSIDE = 1.0
# Guidance scale at positions no mask covers (1: no guidance there; the sampler's scale: eDiff-I).
DEFAULT_UNPAINTED_GUIDANCE = 1.0

# A phrase -> mask mapping; a mask is a PNG path, a PIL image or an array (white = painted).
Paint = Mapping[str, Any]
PaintSpec = Union[Paint, Sequence[Paint]]


def load_mask(mask: Any, phrase: str = "") -> np.ndarray:
  """A mask as ``[h, w]`` float32 strengths in [0, 1]: white 1, black 0, grey in between.

  Accepts a path to an image, a PIL image (transparent pixels count as black; 16-bit files are
  scaled, EXIF orientation applied: ``vqd_jax.images``), or an array ``[h, w]`` or ``[h, w, C]``
  (bool, uint8 0-255 or float 0-1; colour channels are averaged, alpha is ignored).
  """
  where = f" (phrase {phrase!r})" if phrase else ""
  if isinstance(mask, (str, os.PathLike)):
    if not os.path.isfile(mask):
      raise ValueError(f"Paint mask {os.fspath(mask)!r}{where} is not a file; give a PNG path.")
    mask = images_lib.read_image_file(os.fspath(mask), f"Paint mask{where}")
  if isinstance(mask, Image.Image):
    return images_lib.mask_levels(mask)
  array = np.asarray(mask)
  if array.dtype == bool:
    array = array.astype(np.float32)
  elif array.dtype == np.uint8:
    array = array.astype(np.float32) / 255.0
  else:
    array = array.astype(np.float32)
    if array.size and (not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1):
      raise ValueError(f"Paint mask{where} holds values outside [0, 1]; pass floats in [0, 1], "
                       "uint8 0-255 or bool.")
  if array.ndim == 3 and array.shape[-1] in (1, 2, 3, 4):
    colour = array.shape[-1] if array.shape[-1] in (1, 3) else array.shape[-1] - 1
    array = array[..., :colour].mean(-1)  # grey level; alpha ignored
  if array.ndim != 2 or min(array.shape) == 0:
    raise ValueError(f"Paint mask{where} must be an image [height, width] (or with a channel axis), "
                     f"got shape {np.shape(mask)}.")
  return array


def mask_to_grid(mask: np.ndarray, height: int, width: int) -> np.ndarray:
  """``[h, w]`` strengths averaged by area onto a ``height × width`` grid, ``[height·width]``
  in raster order (the token order)."""
  image = Image.fromarray(np.asarray(mask, np.float32), mode="F")
  return np.asarray(image.resize((width, height), Image.Resampling.BOX), np.float32).reshape(-1)


def _content_ids(tokenizer: Any, text: str) -> list[int]:
  """The ids of ``text`` without start, end and padding tokens."""
  ids, mask = tokenizer([text])
  specials = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
  return [int(i) for i, m in zip(ids[0], mask[0]) if m and int(i) not in specials]


def phrase_positions(tokenizer: Any, prompt: str, phrase: str) -> list[int]:
  """Columns of ``prompt``'s token row that spell ``phrase``, for every occurrence.

  The phrase is tokenised by the same tokenizer as the prompt (word or CLIP BPE), so a phrase of
  several tokens, or a word that BPE splits, maps to all of its tokens.

  Raises:
    ValueError: the phrase is empty, has words the tokenizer does not know, or does not occur in
      the prompt (the message lists the prompt's tokens).
  """
  target = _content_ids(tokenizer, phrase)
  if not target:
    raise ValueError(f"Paint phrase {phrase!r} has no tokens; name words of the prompt.")
  unk = getattr(tokenizer, "unk_id", None)
  if unk is not None and unk in target:
    unknown = tokenizer.unknown_words(phrase)
    raise ValueError(f"Paint phrase {phrase!r} has words the tokenizer does not know: {unknown}.")
  ids = tokenizer([prompt])[0][0].tolist()
  n = len(target)
  found = [i for i in range(len(ids) - n + 1) if ids[i:i + n] == target]
  if not found:
    raise ValueError(f"Paint phrase {phrase!r} does not occur in the prompt {prompt!r}, whose "
                     f"tokens are {tokenizer.tokens(prompt)}; paint words of the prompt.")
  return [i + k for i in found for k in range(n)]


def paint_weights(tokenizer: Any, prompts: Sequence[str], paint: PaintSpec, height: int,
                  width: int, weight: float = DEFAULT_PAINT_WEIGHT,
                  outside: float = DEFAULT_PAINT_OUTSIDE) -> np.ndarray:
  """The ``[B, N, L]`` paint map (N = height·width tokens, L = the tokenizer's length).

  Args:
    tokenizer: the conditioner's tokenizer (``WordTokenizer`` or ``CLIPTokenizerWrapper``).
    prompts: the B prompts.
    paint: one ``{phrase: mask}`` for every prompt, or a list of B of them (``{}``: none).
    height, width: the token grid.
    weight: the user's strength w (0 turns painting off); masks sum where phrases overlap.
    outside: the phrase's column is ``mask − outside · (1 − mask)`` (0: positive inside only).

  Raises:
    ValueError: a phrase missing from its prompt, an unreadable or empty mask, a bad weight.
  """
  if not np.isfinite(weight) or weight < 0:
    raise ValueError(f"paint_weight must be a finite number >= 0, got {weight}.")
  if not np.isfinite(outside) or outside < 0:
    raise ValueError(f"paint_outside must be a finite number >= 0, got {outside}.")
  out = np.zeros((len(prompts), height * width, tokenizer.max_length), np.float32)
  for row, (prompt, grids) in enumerate(zip(prompts, _grids(paint, len(prompts), height, width))):
    for phrase, grid in grids.items():
      column = grid - outside * (1.0 - grid)
      out[row][:, phrase_positions(tokenizer, prompt, phrase)] += column[:, None]
  return weight * out


def guidance_scales(paint: PaintSpec, batch: int, height: int, width: int, guidance_scale: float,
                    unpainted_guidance: float = DEFAULT_UNPAINTED_GUIDANCE) -> np.ndarray:
  """``[B, N]`` guidance scale per token: ``guidance_scale`` where a mask is painted white,
  ``unpainted_guidance`` where none is, linear in the strongest mask's strength in between.

  Raises:
    ValueError: a scale that is not a finite number, or a mask as in ``paint_weights``.
  """
  if not np.isfinite(unpainted_guidance):
    raise ValueError(f"unpainted_guidance must be a finite number, got {unpainted_guidance}.")
  out = np.zeros((batch, height * width), np.float32)
  for row, grids in enumerate(_grids(paint, batch, height, width)):
    strength = np.max(list(grids.values()), axis=0) if grids else np.zeros(height * width)
    out[row] = unpainted_guidance + (guidance_scale - unpainted_guidance) * strength
  return out


def load_masks(paint: PaintSpec, batch: int) -> list[dict[str, np.ndarray]]:
  """``paint`` as one ``{phrase: [h, w] strengths}`` per prompt, every file read once."""
  per_prompt = [paint] * batch if isinstance(paint, Mapping) else list(paint)
  if len(per_prompt) != batch:
    raise ValueError(f"paint needs one {{phrase: mask}} for all prompts or one per prompt: got "
                     f"{len(per_prompt)} for {batch} prompts.")
  return [{phrase: load_mask(mask, phrase) for phrase, mask in phrases.items()}
          for phrases in per_prompt]


def _grids(paint: PaintSpec, batch: int, height: int, width: int) -> list[dict[str, np.ndarray]]:
  """Per prompt, phrase -> its mask on the token grid ``[N]`` (checked non-empty)."""
  out = []
  for phrases in load_masks(paint, batch):
    out.append({})
    for phrase, mask in phrases.items():
      grid = mask_to_grid(mask, height, width)
      if not grid.any():
        raise ValueError(f"The paint mask of {phrase!r} is empty on the {height}x{width} token "
                         "grid; paint the region white (grey for partial strength).")
      out[-1][phrase] = grid
  return out
