"""Procedural captioned shapes: the built-in dataset, generated on the fly.

One or two flat-coloured objects on black, e.g. "a large red circle" or "a small blue square to the
left of a large yellow triangle". Sample ``i`` depends only on ``(seed, i)``, so the dataset is
random-access, unbounded and identical on every host.

The data are built to be learnable and unambiguous, because :mod:`vqd_jax.evaluation.shapes` scores
generated images against their captions with the same rules:

* colours are pure RGB and shapes are rasterised without antialiasing, so every object pixel is
  exactly one palette colour;
* objects never overlap, and two objects never share a colour;
* "small" objects span 7-8 px and "large" ones 13-14 px at 32x32 (scaled with the resolution), far
  from the scorer's threshold at 10.5 px;
* a relation is only stated along an axis where the gap between the objects is at least 2 px
  (scaled) and their centres are nearly aligned on the other axis (at most 2 px apart, scaled).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator

import numpy as np

BASE_RESOLUTION = 32
MIN_RESOLUTION = 24
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "magenta": (255, 0, 255), "cyan": (0, 255, 255), "white": (255, 255, 255),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
RELATIONS = ("to the left of", "to the right of", "above", "below")
# Object extents (bounding-box side) at BASE_RESOLUTION, inclusive ranges.
SIZE_EXTENTS = {"small": (7, 8), "large": (13, 14)}
# The scorer's small/large boundary at BASE_RESOLUTION: halfway between the two ranges.
SIZE_THRESHOLD = (SIZE_EXTENTS["small"][1] + SIZE_EXTENTS["large"][0]) / 2
MIN_GAP = 2          # px at BASE_RESOLUTION between two objects along the relation axis
MAX_MISALIGNMENT = 2  # px at BASE_RESOLUTION between the centres on the other axis
VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(
    ["a", *SIZES, *COLORS, *SHAPES] + " ".join(RELATIONS).split()))


@dataclasses.dataclass(frozen=True)
class ShapeObject:
  """One drawn object; ``(x0, y0)`` is the top-left pixel of its ``extent`` x ``extent`` box."""
  color: str
  shape: str
  size: str
  x0: int
  y0: int
  extent: int

  @property
  def phrase(self) -> str:
    return f"a {self.size} {self.color} {self.shape}"


@dataclasses.dataclass(frozen=True)
class ShapesExample:
  """``image`` uint8 ``[R, R, 3]``; ``relation`` relates ``objects[0]`` to ``objects[1]``."""
  image: np.ndarray
  caption: str
  objects: tuple[ShapeObject, ...]
  relation: str | None


def scale_of(resolution: int) -> float:
  """Pixels per base pixel: every geometric constant above is multiplied by it."""
  return resolution / BASE_RESOLUTION


def extent_range(size: str, resolution: int) -> tuple[int, int]:
  lo, hi = SIZE_EXTENTS[size]
  s = scale_of(resolution)
  return int(round(lo * s)), int(round(hi * s))


@functools.lru_cache(maxsize=None)
def object_mask(shape: str, extent: int) -> np.ndarray:
  """bool ``[extent, extent]``: the object's pixels, sampled at pixel centres (no antialiasing).

  Cached (a handful of shapes x extents), so the result is read-only.
  """
  mask = _rasterise(shape, extent)
  mask.setflags(write=False)
  return mask


def _rasterise(shape: str, extent: int) -> np.ndarray:
  centers = (np.arange(extent) + 0.5) / extent
  v, u = np.meshgrid(centers, centers, indexing="ij")  # v: rows (down), u: columns (right)
  if shape == "square":
    return np.ones((extent, extent), bool)
  if shape == "circle":
    return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
  if shape == "triangle":  # upright isosceles: apex at the top centre, base along the bottom
    return np.abs(u - 0.5) <= v / 2
  raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def render(objects: tuple[ShapeObject, ...], resolution: int) -> np.ndarray:
  """uint8 ``[R, R, 3]``: the objects on black."""
  image = np.zeros((resolution, resolution, 3), np.uint8)
  for obj in objects:
    mask = object_mask(obj.shape, obj.extent)
    window = image[obj.y0:obj.y0 + obj.extent, obj.x0:obj.x0 + obj.extent]
    window[mask] = COLORS[obj.color]
  return image


def caption_of(objects: tuple[ShapeObject, ...], relation: str | None) -> str:
  if len(objects) == 1:
    return objects[0].phrase
  return f"{objects[0].phrase} {relation} {objects[1].phrase}"


def _random_attributes(rng: np.random.Generator, count: int, resolution: int
                       ) -> list[tuple[str, str, str, int]]:
  colors = rng.choice(list(COLORS), size=count, replace=False)
  out = []
  for color in colors:
    shape = SHAPES[rng.integers(len(SHAPES))]
    size = SIZES[rng.integers(len(SIZES))]
    lo, hi = extent_range(size, resolution)
    out.append((str(color), shape, size, int(rng.integers(lo, hi + 1))))
  return out


def _place_pair(rng: np.random.Generator, extents: tuple[int, int], resolution: int
                ) -> tuple[tuple[int, int], tuple[int, int]]:
  """Starts ``(along, across)`` of two boxes: the first before the second along the axis."""
  s = scale_of(resolution)
  margin = 1
  gap = max(2, int(round(MIN_GAP * s)))
  e1, e2 = extents
  slack = resolution - 2 * margin - e1 - e2 - gap
  if slack < 0:
    raise ValueError(f"Resolution {resolution} is too small for two objects side by side.")
  a, b = np.sort(rng.integers(0, slack + 1, size=2))
  along1 = margin + int(a)
  along2 = along1 + e1 + gap + int(b - a)
  # Shared centre on the other axis, then a small independent offset for each object.
  half = max(e1, e2) / 2
  center = rng.uniform(margin + half, resolution - margin - half)
  spread = MAX_MISALIGNMENT * s / 2
  across = []
  for e in extents:
    start = int(round(center + rng.uniform(-spread, spread) - e / 2))
    across.append(int(np.clip(start, margin, resolution - margin - e)))
  return (along1, across[0]), (along2, across[1])


def generate_example(seed: int, index: int, *, resolution: int = BASE_RESOLUTION,
                     two_object_prob: float = 0.5) -> ShapesExample:
  """Sample ``index`` of the shapes dataset with ``seed`` (a pure function of its arguments)."""
  if resolution < MIN_RESOLUTION:
    raise ValueError(f"Shapes resolution {resolution} is below {MIN_RESOLUTION}: small and large "
                     "objects would no longer be clearly distinct. Use 32 or more.")
  rng = np.random.default_rng([seed, index])
  two = rng.random() < two_object_prob
  attrs = _random_attributes(rng, 2 if two else 1, resolution)
  margin = 1
  if not two:
    color, shape, size, e = attrs[0]
    x0, y0 = (int(v) for v in rng.integers(margin, resolution - margin - e + 1, size=2))
    objects = (ShapeObject(color, shape, size, x0, y0, e),)
    relation = None
  else:
    relation = RELATIONS[rng.integers(len(RELATIONS))]
    # "A to the right of B" and "A below B" put B first along the axis.
    first, second = (1, 0) if relation in ("to the right of", "below") else (0, 1)
    starts = _place_pair(rng, (attrs[first][3], attrs[second][3]), resolution)
    horizontal = relation in ("to the left of", "to the right of")
    boxes = {}
    for which, (along, across) in zip((first, second), starts):
      boxes[which] = (along, across) if horizontal else (across, along)
    objects = tuple(ShapeObject(*attrs[k][:3], boxes[k][0], boxes[k][1], attrs[k][3])
                    for k in (0, 1))
  return ShapesExample(render(objects, resolution), caption_of(objects, relation), objects,
                       relation)


class ShapesSource:
  """Random-access source of ``{"image": uint8 [R, R, 3], "caption": str}`` shapes records.

  Args:
    resolution: image side R in pixels (>= 24; 32 is the quickstart's).
    seed: selects the dataset; record ``i`` depends only on ``(seed, i)``.
    length: number of records the source exposes (the generator itself is unbounded).
    two_object_prob: probability that a record shows two related objects rather than one.
  """

  def __init__(self, resolution: int = BASE_RESOLUTION, seed: int = 0, length: int = 1_000_000,
               two_object_prob: float = 0.5):
    if length <= 0:
      raise ValueError(f"ShapesSource length must be positive, got {length}.")
    if not 0.0 <= two_object_prob <= 1.0:
      raise ValueError(f"two_object_prob must be in [0, 1], got {two_object_prob}.")
    generate_example(seed, 0, resolution=resolution)  # validates the resolution early
    self.resolution = resolution
    self.seed = seed
    self.length = length
    self.two_object_prob = two_object_prob

  def __len__(self) -> int:
    return self.length

  def example(self, index: int) -> ShapesExample:
    if not 0 <= index < self.length:
      raise IndexError(f"Shapes index {index} is outside [0, {self.length}).")
    return generate_example(self.seed, index, resolution=self.resolution,
                            two_object_prob=self.two_object_prob)

  def __getitem__(self, index: int) -> dict:
    ex = self.example(int(index))
    return {"image": ex.image, "caption": ex.caption}

  def __repr__(self) -> str:
    return (f"ShapesSource(resolution={self.resolution}, seed={self.seed}, length={self.length}, "
            f"two_object_prob={self.two_object_prob})")


def vocabulary_captions() -> Iterator[str]:
  """A small deterministic caption set that uses every word and every attribute combination.

  Every single-object phrase once, then each relation once with a rotating pair of phrases: enough
  to fit a word tokenizer without walking an unbounded source.
  """
  phrases = [f"a {size} {color} {shape}"
             for size, color, shape in itertools.product(SIZES, COLORS, SHAPES)]
  yield from phrases
  for k, relation in enumerate(RELATIONS):
    yield f"{phrases[k]} {relation} {phrases[-1 - k]}"
