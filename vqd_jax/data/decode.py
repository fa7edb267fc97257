"""Turning raw source records into training examples: decode, resize, crop, flip, skip bad ones.

A raw record is ``{"image": ..., "caption": ...}`` where the image is a uint8 array, encoded bytes
or a file path, and the caption a string, bytes or a sequence of alternatives (one is drawn).
Records that cannot be used (unreadable or undecodable image, no caption) become ``None`` and are
counted in this process's skip counters (:func:`skip_counts`), never an exception: one corrupt
file must not stop a week-long run.
"""

from __future__ import annotations

import collections
import io
import logging
import re
import threading
from collections.abc import Mapping

import numpy as np
from PIL import Image

from vqd_jax import images as images_lib

log = logging.getLogger(__name__)

# Alpha is composited onto white, the background transparent images (emoji, icons) are drawn for.
ALPHA_BACKGROUND = (255, 255, 255)
# The first few skipped records are logged by name; after that only the counters grow.
_LOGGED_SKIPS = 20

_lock = threading.Lock()
_skips: collections.Counter = collections.Counter()


def skip_counts() -> dict[str, int]:
  """Records skipped so far in this process, by reason (e.g. ``{"undecodable_image": 3}``).

  Counts are per process: with ``worker_count > 0`` each grain worker counts (and logs) its own.
  """
  with _lock:
    return dict(_skips)


def reset_skip_counts() -> None:
  with _lock:
    _skips.clear()


def count_skip(reason: str, detail: str) -> None:
  with _lock:
    _skips[reason] += 1
    total = sum(_skips.values())
  if total <= _LOGGED_SKIPS:
    log.warning("Skipping a record (%s): %s", reason, detail)
  elif total == _LOGGED_SKIPS + 1:
    log.warning("More records skipped; see vqd_jax.data.skip_counts() for the totals.")


def to_rgb(image: Image.Image) -> np.ndarray:
  """uint8 ``[H, W, 3]`` from any PIL mode; alpha is composited onto ``ALPHA_BACKGROUND``."""
  return np.asarray(images_lib.on_background(image, ALPHA_BACKGROUND), dtype=np.uint8)


def read_image(image) -> np.ndarray:
  """uint8 ``[H, W, 3]`` from a path, encoded bytes or an array (``[H, W]``, ``[H, W, 1|3|4]``).

  Files and bytes are read upright (EXIF orientation) and 16-bit ones scaled to 8 bits
  (``vqd_jax.images.normalize``). Raises OSError/ValueError (PIL's errors included) for anything
  unreadable.
  """
  if isinstance(image, np.ndarray):
    array = image
    if array.dtype != np.uint8:
      raise ValueError(f"Image arrays must be uint8, got {array.dtype}.")
    if array.ndim == 2:
      array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or min(array.shape[:2]) == 0:
      raise ValueError(f"Image array has unsupported shape {array.shape}; expected [H, W, 1|3|4].")
    if array.shape[-1] == 3:
      return array
    mode = "L" if array.shape[-1] == 1 else "RGBA"
    return to_rgb(Image.fromarray(array[..., 0] if mode == "L" else array, mode))
  if isinstance(image, (bytes, bytearray, memoryview)):
    stream = io.BytesIO(bytes(image))
  else:
    stream = open(image, "rb")  # pylint: disable=consider-using-with
  with stream, Image.open(stream) as pil:
    pil.load()  # decode now, inside the error handling, not lazily later
    return to_rgb(images_lib.normalize(pil))


def resize_square(image: np.ndarray, size: int, rng: np.random.Generator | None = None,
                  random_crop: bool = False) -> np.ndarray:
  """uint8 ``[size, size, 3]``: shorter side resized, then a square crop.

  Without ``random_crop`` the shorter side becomes ``size`` and the crop is centred. With it the
  shorter side becomes ``size * 9/8`` and the crop position is drawn from ``rng``: a mild scale and
  translation augmentation that never cuts most of an object away.
  """
  h, w = image.shape[:2]
  target = size if not random_crop else int(round(size * 9 / 8))
  scale = target / min(h, w)
  new_h, new_w = max(target, int(round(h * scale))), max(target, int(round(w * scale)))
  if (new_h, new_w) != (h, w):
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
    image = np.asarray(resized, dtype=np.uint8)
  if random_crop:
    if rng is None:
      raise ValueError("random_crop needs an rng.")
    top = int(rng.integers(0, new_h - size + 1))
    left = int(rng.integers(0, new_w - size + 1))
  else:
    top, left = (new_h - size) // 2, (new_w - size) // 2
  return image[top:top + size, left:left + size]


_LEFT_RIGHT = re.compile(r"\b(left|right)(?=\b|most\b|ward)", re.IGNORECASE)


def mirror_caption(caption: str) -> str:
  """Swaps the words left/right (keeping case): the caption of the horizontally flipped image."""

  def swap(match: re.Match) -> str:
    word = match.group(0)
    other = "right" if word.lower() == "left" else "left"
    if word.isupper():
      return other.upper()
    return other.capitalize() if word[0].isupper() else other

  return _LEFT_RIGHT.sub(swap, caption)


def as_text(value) -> str:
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8", errors="replace")
  return str(value)


def pick_caption(value, rng: np.random.Generator | None) -> str:
  """One caption from a string/bytes or a sequence of alternatives (empty ones ignored)."""
  if isinstance(value, (str, bytes, np.str_, np.bytes_)):
    return as_text(value).strip()
  options = [c for c in (as_text(v).strip() for v in value) if c]
  if not options:
    return ""
  if len(options) == 1 or rng is None:
    return options[0]
  return options[int(rng.integers(len(options)))]


def describe(raw: Mapping) -> str:
  """A short name of a record for logs: its path when it has one."""
  image = raw.get("image")
  return repr(image) if isinstance(image, str) else raw.get("name", "<in-memory record>")


def load_example(raw: Mapping, image_size: int, *, rng: np.random.Generator | None = None,
                 random_crop: bool = False, random_flip: bool = False) -> dict | None:
  """``{"image": uint8 [S, S, 3], "caption": str}`` from a raw record, or None if unusable."""
  if raw.get("error"):
    count_skip(raw["error"], describe(raw))
    return None
  caption = pick_caption(raw.get("caption", ""), rng)
  if not caption:
    count_skip("empty_caption", describe(raw))
    return None
  try:
    image = read_image(raw["image"])
    image = resize_square(image, image_size, rng, random_crop)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    # PIL raises OSError for truncated files, SyntaxError for some malformed headers.
    count_skip("undecodable_image", f"{describe(raw)}: {type(e).__name__}: {e}")
    return None
  if random_flip:
    if rng is None:
      raise ValueError("random_flip needs an rng.")
    if rng.random() < 0.5:
      image = image[:, ::-1]
      caption = mirror_caption(caption)
  return {"image": np.ascontiguousarray(image), "caption": caption}
