"""Image helpers shared by the CLIs, previews and data: grids, PNG files, reading user images.

User images are read whole (:func:`read_image_file`), upright (their EXIF orientation applied) and
at 8 bits per sample (16-bit PNGs scaled, not clipped); an unreadable file is an
:class:`ImageFileError` that names it and the problem.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageOps

# PIL modes of 16- and 32-bit integer samples (16-bit PNGs open as one of them).
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def to_uint8(images: np.ndarray) -> np.ndarray:
  """``[-1, 1]`` floats -> uint8 (values outside are clipped)."""
  images = (np.asarray(images, np.float32) + 1.0) * 127.5
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
  """``[B, H, W, 3]`` uint8 -> one ``[rows*(H+pad)+pad, cols*(W+pad)+pad, 3]`` grid on grey."""
  images = np.asarray(images)
  b, h, w, c = images.shape
  cols = cols or int(math.ceil(math.sqrt(b)))
  rows = int(math.ceil(b / cols))
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 128, np.uint8)
  for i, img in enumerate(images):
    r, q = divmod(i, cols)
    y, x = pad + r * (h + pad), pad + q * (w + pad)
    grid[y:y + h, x:x + w] = img
  return grid


def save_png(path: str, image: np.ndarray, upscale: int = 1) -> None:
  """Writes ``[H, W, 3]`` uint8; ``upscale`` > 1 enlarges with nearest neighbours (for tiny images)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img = Image.fromarray(np.asarray(image, np.uint8))
  if upscale > 1:
    img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
  img.save(path)


class ImageFileError(ValueError):
  """An image file that is missing or cannot be decoded; the message names the file and why."""


def normalize(image: Image.Image) -> Image.Image:
  """``image`` upright (its EXIF orientation applied, in place) with 16-bit grey samples scaled to
  8 bits (``convert("L")`` would clip them: every value above 255 white)."""
  ImageOps.exif_transpose(image, in_place=True)
  if image.mode in _WIDE_MODES:
    levels = np.asarray(image, np.float64) / 257.0
    image = Image.fromarray(np.clip(np.round(levels), 0, 255).astype(np.uint8), "L")
  return image


def read_image_file(path: str, what: str = "Image") -> Image.Image:
  """The image in ``path``, decoded now and :func:`normalize`-d.

  Raises:
    ImageFileError: ``"<what> '<path>': <problem>"`` for a missing path, a folder, a file PIL
      cannot identify or decode (truncated, not an image) or one above PIL's decompression-bomb
      limit (``Image.MAX_IMAGE_PIXELS``).
  """
  where = f"{what} {path!r}"
  if not os.path.exists(path):
    raise ImageFileError(f"{where}: no such file.")
  if not os.path.isfile(path):
    raise ImageFileError(f"{where} is not a file; give an image file (PNG, JPEG ...).")
  try:
    with Image.open(path) as image:
      image.load()
      return normalize(image)
  except Image.DecompressionBombError as e:
    raise ImageFileError(f"{where} is too large to decode safely ({e}); resize it first.") \
        from None
  except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for unreadable files
    raise ImageFileError(f"{where} cannot be read as an image ({type(e).__name__}: {e}); give "
                         "a PNG or JPEG.") from None


def on_background(image: Image.Image, colour: tuple[int, int, int] = (255, 255, 255)
                  ) -> Image.Image:
  """``image`` in RGB, its transparent pixels composited onto ``colour``."""
  if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    image = Image.alpha_composite(Image.new("RGBA", rgba.size, colour + (255,)), rgba)
  return image.convert("RGB")


def mask_levels(image: Image.Image) -> np.ndarray:
  """``[H, W]`` float32 grey levels in [0, 1] of a mask image; transparent pixels count as black,
  whatever colour they hold."""
  return np.asarray(on_background(image, (0, 0, 0)).convert("L"), np.float32) / 255.0
