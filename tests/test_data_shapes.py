"""The procedural shapes dataset: determinism, purity, geometry and captions."""

import math
import re

import numpy as np
import pytest

from vqd_jax import data
from vqd_jax.data import shapes

PALETTE = {(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255),
           (0, 255, 255), (255, 255, 255)}
PHRASE = r"a (small|large) (red|green|blue|yellow|magenta|cyan|white) (circle|square|triangle)"
CAPTION = re.compile(rf"^{PHRASE}( (to the left of|to the right of|above|below) {PHRASE})?$")


def test_sample_depends_only_on_seed_and_index():
  a = data.ShapesSource(resolution=32, seed=3, length=100)
  b = data.ShapesSource(resolution=32, seed=3, length=50)
  order = [7, 3, 49, 0]
  for i in order:  # a different access order and a different length change nothing
    assert np.array_equal(a[i]["image"], b[i]["image"])
    assert a[i]["caption"] == b[i]["caption"]
  other = data.ShapesSource(resolution=32, seed=4, length=100)
  assert sum(a[i]["caption"] != other[i]["caption"] for i in range(20)) >= 15


@pytest.mark.parametrize("resolution", [32, 64])
def test_images_are_pure_palette_and_match_objects(resolution):
  for i in range(200):
    ex = shapes.generate_example(11, i, resolution=resolution)
    assert ex.image.shape == (resolution, resolution, 3) and ex.image.dtype == np.uint8
    colours = {tuple(c) for c in ex.image.reshape(-1, 3)}
    assert colours <= PALETTE, "antialiasing or blending leaked a non-palette colour"
    assert colours - {(0, 0, 0)} == {shapes.COLORS[o.color] for o in ex.objects}
    for obj in ex.objects:
      # Every pixel of the colour lies inside the object's box: nothing overlaps or bleeds.
      ys, xs = np.nonzero((ex.image == shapes.COLORS[obj.color]).all(-1))
      assert ys.min() >= obj.y0 and ys.max() < obj.y0 + obj.extent
      assert xs.min() >= obj.x0 and xs.max() < obj.x0 + obj.extent
      assert 0 < obj.x0 and obj.x0 + obj.extent < resolution  # a margin on every side


@pytest.mark.parametrize("resolution", [32, 64])
def test_sizes_are_distinct_at_every_resolution(resolution):
  s = resolution / 32
  for i in range(300):
    for obj in shapes.generate_example(5, i, resolution=resolution).objects:
      lo, hi = (7, 8) if obj.size == "small" else (13, 14)
      assert round(lo * s) <= obj.extent <= round(hi * s)


def test_masks_have_the_closed_form_areas():
  extent = 64  # large enough that rasterisation error is small
  area = extent * extent
  assert shapes.object_mask("square", extent).sum() == area
  assert shapes.object_mask("circle", extent).sum() / area == pytest.approx(math.pi / 4, abs=0.01)
  triangle = shapes.object_mask("triangle", extent)
  assert triangle.sum() / area == pytest.approx(0.5, abs=0.02)
  assert triangle[: extent // 2].sum() / triangle.sum() == pytest.approx(0.25, abs=0.02)


def _center(obj):
  return obj.x0 + obj.extent / 2, obj.y0 + obj.extent / 2


@pytest.mark.parametrize("resolution", [32, 64])
def test_relations_are_clear_and_true(resolution):
  s = resolution / 32
  seen = set()
  for i in range(400):
    ex = shapes.generate_example(2, i, resolution=resolution)
    assert CAPTION.match(ex.caption), ex.caption
    if ex.relation is None:
      assert ex.caption == ex.objects[0].phrase
      continue
    a, b = ex.objects
    assert a.color != b.color
    assert ex.caption == f"{a.phrase} {ex.relation} {b.phrase}"
    seen.add(ex.relation)
    (ax, ay), (bx, by) = _center(a), _center(b)
    if ex.relation in ("to the left of", "to the right of"):
      left, right = (a, b) if ex.relation == "to the left of" else (b, a)
      assert left.x0 + left.extent + 2 * s <= right.x0 + 1e-9  # a clear gap along x
      assert abs(ay - by) <= 2 * s + 1  # nearly aligned along y (1 px rounding)
    else:
      top, bottom = (a, b) if ex.relation == "above" else (b, a)
      assert top.y0 + top.extent + 2 * s <= bottom.y0 + 1e-9
      assert abs(ax - bx) <= 2 * s + 1
  assert seen == set(shapes.RELATIONS)


def test_two_object_probability():
  for prob, expected in ((0.0, 0.0), (1.0, 1.0), (0.3, 0.3)):
    src = data.ShapesSource(seed=1, length=1000, two_object_prob=prob)
    frac = np.mean([src.example(i).relation is not None for i in range(1000)])
    assert frac == pytest.approx(expected, abs=0.05)


def test_vocabulary_covers_every_caption_word():
  vocab = set(data.SHAPES_VOCABULARY)
  assert len(vocab) == len(data.SHAPES_VOCABULARY) == 20
  words = {w for i in range(300) for w in shapes.generate_example(0, i).caption.split()}
  assert words <= vocab
  fitted = {w for c in data.iter_captions(data.ShapesSource()) for w in c.split()}
  assert fitted == vocab
  assert all(CAPTION.match(c) for c in data.iter_captions(data.ShapesSource()))


def test_bad_arguments_are_explained():
  with pytest.raises(ValueError, match="resolution 16"):
    data.ShapesSource(resolution=16)
  with pytest.raises(ValueError, match="two_object_prob"):
    data.ShapesSource(two_object_prob=1.5)
  with pytest.raises(IndexError):
    data.ShapesSource(length=5)[5]
