"""Image helpers shared by the CLIs and previews: grids and PNG files."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


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
