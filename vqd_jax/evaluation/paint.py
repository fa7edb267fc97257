"""Does paint-with-words put objects where they were painted? Tasks and checks for shapes runs.

A task is a shapes prompt with one box per object, in places the caption does not imply:

* one object: a random quadrant of the image (unpainted, a randomly placed object's centre lies in
  it about a quarter of the time);
* two objects: two quadrants of the same half (the data draws related objects in line), on the
  sides the relation names: "A to the left of B" paints A in the left and B in the right quadrant
  of a random top or bottom half (unpainted: about half of the time).

An object is inside its box when the centroid of the one detected object of its colour is.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vqd_jax.evaluation import shape_detect
from vqd_jax.evaluation import shapes as shapes_eval

Box = tuple[int, int, int, int]  # (top, left, bottom, right), exclusive ends, pixels

# Quadrant (row, column) of the first object and the second, per relation of a two-object caption
# and per choice of half (0 = top/left, 1 = bottom/right).
_PAIRS = {
    "to the left of": lambda half: ((half, 0), (half, 1)),
    "to the right of": lambda half: ((half, 1), (half, 0)),
    "above": lambda half: ((0, half), (1, half)),
    "below": lambda half: ((1, half), (0, half)),
}


@dataclasses.dataclass(frozen=True)
class PaintTask:
  """``prompt`` with ``boxes``: phrase ("a large red circle") -> box; ``colors``: phrase ->
  colour."""
  prompt: str
  boxes: dict[str, Box]
  colors: dict[str, str]


def quadrant(row: int, col: int, resolution: int) -> Box:
  half = resolution // 2
  return (row * half, col * half, (row + 1) * half, (col + 1) * half)


def box_mask(box: Box, resolution: int) -> np.ndarray:
  """uint8 ``[R, R]``: 255 inside ``box``, 0 elsewhere (a mask as users paint it)."""
  mask = np.zeros((resolution, resolution), np.uint8)
  top, left, bottom, right = box
  mask[top:bottom, left:right] = 255
  return mask


def make_task(prompt: str, rng: np.random.Generator, resolution: int) -> PaintTask:
  """The boxes of the module docstring for a shapes ``prompt``."""
  parsed = shapes_eval.parse_caption(prompt)
  # The whole noun phrase, article too: the text encoder spreads the object into "a", and
  # leaving it unpainted let positions outside the box read the object there (docs/experiments.md).
  phrases = [f"a {o.size} {o.color} {o.shape}" for o in parsed.objects]
  colors = {p: o.color for p, o in zip(phrases, parsed.objects)}
  if len(phrases) == 1:
    cells = [tuple(int(v) for v in rng.integers(0, 2, size=2))]
  else:
    cells = _PAIRS[parsed.relation](int(rng.integers(0, 2)))
  return PaintTask(prompt, {p: quadrant(*c, resolution) for p, c in zip(phrases, cells)}, colors)


def inside(image: np.ndarray, task: PaintTask) -> bool:
  """Whether every painted object is drawn once and its centroid lies in its box."""
  found = shape_detect.detect_objects(image)
  for phrase, box in task.boxes.items():
    same = [o for o in found if o.color == task.colors[phrase]]
    if len(same) != 1:
      return False
    y, x = same[0].centroid
    top, left, bottom, right = box
    if not (top <= y < bottom and left <= x < right):
      return False
  return True


def fraction_with_error(hits: list[bool]) -> tuple[float, float]:
  """Mean and its binomial standard error."""
  n = len(hits)
  p = float(np.mean(hits)) if n else float("nan")
  return p, float(np.sqrt(p * (1 - p) / n)) if n else float("nan")
