"""Finds the flat-coloured objects of a shapes image and identifies their shape and size.

1. Each pixel takes the nearest of the 8 palette colours (the 7 object colours and black); each
   colour's 4-connected components above a few pixels are objects. Palette colours are >= 255
   apart, so the noise of a VQ decode does not move a pixel to another colour.
2. Each object's *coverage* map (how much of the colour each pixel holds, in [0, 1], over the
   component and a 2 px ring) is compared with the generator's own rasterised masks of every shape
   and extent, centred on the object's centroid. The best match names the shape and the extent;
   a blur spreads coverage evenly around the perimeter, which costs every candidate alike, so the
   true shape still wins where binary features (fill ratio, bounding box) break down.
3. A match worse than ``MAX_MISMATCH`` (a bar, an upside-down triangle, a ragged blob) is shape
   "unknown"; an extent outside the generator's band is size "unknown". Neither is ever correct.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage

from vqd_jax.data import shapes as shapes_lib

PALETTE_NAMES = ("black",) + tuple(shapes_lib.COLORS)
PALETTE = np.array([(0, 0, 0)] + list(shapes_lib.COLORS.values()), np.float32)  # [8, 3]
# Components smaller than this (at 32x32, scaled by area) are specks, e.g. blur seams between
# colours; the smallest real object (a 7 px triangle) has ~25 pixels.
MIN_PIXELS = 8
# Extents (px at 32x32) of real objects: the generator draws 7-8 and 13-14.
MIN_EXTENT = 5.0
MAX_EXTENT = 18.0
# Mismatch = sum |coverage - template| / (sum coverage + template area); 0 is perfect, 1 disjoint.
# Clean objects score 0; blurred and noisy ones (3x3 box, sigma 20/255) stay below ~0.3.
MAX_MISMATCH = 0.4
NOISE_FLOOR = 0.08
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
_BOX_SLACK = 3  # px a blurred/noisy component's box may differ from the drawn one
_RING = 2  # px of neighbourhood around a component that may hold its blurred edge


@dataclasses.dataclass(frozen=True)
class DetectedObject:
  """One object: colour, pixel count, box ``(top, left, bottom, right)`` (exclusive ends) of its
  component, coverage centroid ``(y, x)``, best template (shape, extent, mismatch) and size."""
  color: str
  pixels: int
  box: tuple[int, int, int, int]
  centroid: tuple[float, float]
  shape: str
  extent: int
  mismatch: float
  size: str

  def describe(self) -> str:
    return f"{self.size} {self.color} {self.shape}"


def palette_labels(image: np.ndarray) -> np.ndarray:
  """int ``[H, W]``: index into ``PALETTE_NAMES`` of each pixel's nearest palette colour."""
  rgb = as_float_rgb(image)
  distances = ((rgb[:, :, None, :] - PALETTE) ** 2).sum(-1)  # [H, W, 8]
  return np.argmin(distances, axis=-1)


def as_float_rgb(image: np.ndarray) -> np.ndarray:
  """float32 ``[H, W, 3]`` in [0, 255] from uint8 or [0, 1] float images."""
  if image.ndim != 3 or image.shape[-1] not in (3, 4):
    raise ValueError(f"Expected an RGB image [H, W, 3], got shape {image.shape}.")
  rgb = image[..., :3].astype(np.float32)
  if image.dtype != np.uint8 and rgb.max(initial=0.0) <= 1.0:
    rgb = rgb * 255.0
  return rgb


def _distractors(extent: int) -> dict[str, np.ndarray]:
  """Masks of shapes the captions never ask for; matching one best makes the object "unknown".

  Without them a wrong drawing (an upside-down triangle, a bar, an ellipse) could still sit closer
  to some named template than a blurred correct drawing does to its own.
  """
  triangle = shapes_lib.object_mask("triangle", extent)
  half = max(2, extent // 2)
  centers = (np.arange(extent) + 0.5) / extent
  v, u = np.meshgrid(centers, centers, indexing="ij")
  short = (np.arange(half) + 0.5) / half
  ev, eu = np.meshgrid(centers, short, indexing="ij")  # [extent, half]
  ellipse = (eu - 0.5) ** 2 + (ev - 0.5) ** 2 <= 0.25
  return {
      "triangle_down": triangle[::-1], "triangle_left": triangle.T,
      "triangle_right": triangle.T[:, ::-1], "diamond": np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5,
      "bar_tall": np.ones((extent, half), bool), "bar_wide": np.ones((half, extent), bool),
      "ellipse_tall": ellipse, "ellipse_wide": ellipse.T,
  }


@functools.lru_cache(maxsize=8)
def _templates(resolution: int) -> tuple:
  """``(shape, extent, mask float [h, w], centroid (y, x), area)`` for every candidate drawing.

  Each mask is present sharp and 3x3-box blurred (decoders blur); distractor shapes are named
  "unknown".
  """
  scale = shapes_lib.scale_of(resolution)
  lo = max(3, int(np.floor(MIN_EXTENT * scale * 0.8)))
  hi = int(np.ceil(MAX_EXTENT * scale * 1.2))
  out = []
  for extent in range(lo, hi + 1):
    masks = [(shape, shapes_lib.object_mask(shape, extent)) for shape in shapes_lib.SHAPES]
    masks += [("unknown", mask) for mask in _distractors(extent).values()]
    for shape, mask in masks:
      sharp = np.pad(mask.astype(np.float32), 1)
      blurred = ndimage.uniform_filter(sharp, size=3, mode="constant")
      for template in (sharp, blurred):
        ys, xs = np.mgrid[:template.shape[0], :template.shape[1]]
        area = float(template.sum())
        centroid = ((template * (ys + 0.5)).sum() / area, (template * (xs + 0.5)).sum() / area)
        out.append((shape, extent, template, centroid, area))
  return tuple(out)


def _mismatch(coverage: np.ndarray, total: float, mask: np.ndarray, mask_area: float,
              top: int, left: int) -> float:
  """Normalised L1 between ``coverage`` and ``mask`` placed at ``(top, left)`` (may overhang)."""
  h, w = coverage.shape
  mh, mw = mask.shape
  y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + mh, h), min(left + mw, w)
  if y0 >= y1 or x0 >= x1:
    return 1.0
  window = coverage[y0:y1, x0:x1]
  part = mask[y0 - top:y1 - top, x0 - left:x1 - left]
  inside = np.abs(window - part).sum()
  # Coverage outside the template, plus template pixels falling outside the image.
  error = inside + (total - window.sum()) + (mask_area - part.sum())
  return float(error / (total + mask_area))


def match_template(coverage: np.ndarray, resolution: int,
                   box_size: tuple[int, int] | None = None) -> tuple[str, int, float]:
  """Best ``(shape, extent, mismatch)`` for one object's coverage map ``[H, W]``.

  ``box_size`` (height, width of the object's component) skips templates whose own box differs by
  more than a blur's reach; None tries every template of plausible mass.
  """
  total = float(coverage.sum())
  ys, xs = np.mgrid[:coverage.shape[0], :coverage.shape[1]]
  cy = float((coverage * (ys + 0.5)).sum() / total)
  cx = float((coverage * (xs + 0.5)).sum() / total)
  best = ("unknown", 0, 1.0)
  for shape, extent, mask, (ty, tx), area in _templates(resolution):
    if not 0.7 * total <= area <= 1.4 * total:
      continue  # the mass cannot match; skip the work
    if box_size is not None and (abs(mask.shape[0] - 2 - box_size[0]) > _BOX_SLACK or
                                 abs(mask.shape[1] - 2 - box_size[1]) > _BOX_SLACK):
      continue  # templates carry a 1 px pad on each side
    top, left = cy - ty, cx - tx
    for dy in {int(np.floor(top)), int(np.ceil(top))}:
      for dx in {int(np.floor(left)), int(np.ceil(left))}:
        m = _mismatch(coverage, total, mask, area, dy, dx)
        if m < best[2]:
          best = (shape, extent, m)
  return best


def classify_size(extent: float, scale: float) -> str:
  if extent < MIN_EXTENT * scale or extent > MAX_EXTENT * scale:
    return "unknown"
  return "small" if extent < shapes_lib.SIZE_THRESHOLD * scale else "large"


def detect_objects(image: np.ndarray, *, min_pixels: float | None = None) -> list[DetectedObject]:
  """All objects of a square ``image`` (uint8 ``[H, W, 3]``), largest first.

  ``min_pixels`` defaults to ``MIN_PIXELS`` scaled by the image area relative to 32x32.
  """
  rgb = as_float_rgb(image)
  resolution = image.shape[0]
  scale = shapes_lib.scale_of(resolution)
  if min_pixels is None:
    min_pixels = MIN_PIXELS * scale * scale
  labels = palette_labels(image)
  gy, gx = np.mgrid[:resolution, :image.shape[1]]
  found = []
  for index, color in enumerate(PALETTE_NAMES):
    if index == 0:
      continue  # background
    components, count = ndimage.label(labels == index, structure=_FOUR_CONNECTED)
    if count == 0:
      continue
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    rgb_color = PALETTE[index]
    # Share of this colour in each pixel: 1 on the object, the blend weight on blurred edges.
    share = rgb @ rgb_color / float(rgb_color @ rgb_color)
    # Ignore the faint share that background noise carries.
    share = np.clip((share - NOISE_FLOOR) / (1.0 - 2 * NOISE_FLOOR), 0.0, 1.0)
    own_or_background = (labels == index) | (labels == 0)
    for component in range(1, count + 1):
      if sizes[component] < min_pixels:
        continue
      mask = components == component
      ring = ndimage.binary_dilation(mask, iterations=_RING) & own_or_background
      coverage = np.where(ring, share, 0.0).astype(np.float32)
      ys, xs = np.nonzero(mask)
      box_size = (int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1)
      shape, extent, mismatch = match_template(coverage, resolution, box_size)
      if mismatch > MAX_MISMATCH:
        shape = "unknown"
      total = coverage.sum()
      centroid = (float((coverage * (gy + 0.5)).sum() / total),
                  float((coverage * (gx + 0.5)).sum() / total))
      found.append(DetectedObject(
          color=color, pixels=int(sizes[component]),
          box=(int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1),
          centroid=centroid, shape=shape, extent=int(extent), mismatch=float(mismatch),
          size=classify_size(extent, scale) if shape != "unknown" else "unknown"))
  return sorted(found, key=lambda obj: -obj.pixels)


def relation_between(a: DetectedObject, b: DetectedObject) -> str:
  """How ``a`` relates to ``b``: along the axis where their centroids differ most."""
  dy = a.centroid[0] - b.centroid[0]
  dx = a.centroid[1] - b.centroid[1]
  if abs(dx) >= abs(dy):
    return "to the left of" if dx < 0 else "to the right of"
  return "above" if dy < 0 else "below"
