"""The paint-with-words tasks of ``python -m vqd_jax.evaluate paint``: boxes, phrases, the check.

Truths: the caption grammar of the shapes data (which object is where), plane geometry of the
quadrants, and images rendered by the shapes data's own renderer at known positions.
"""

import numpy as np
import pytest

from vqd_jax.data import shapes as shapes_lib
from vqd_jax.evaluation import paint as paint_eval
from vqd_jax.inference import paint as paint_lib
from vqd_jax.text.tokenizer import WordTokenizer

R = 32
HALF = R // 2


def _tokenizer():
  return WordTokenizer.fit(list(shapes_lib.vocabulary_captions()), max_length=16)


def test_one_object_gets_its_whole_noun_phrase_in_a_quadrant():
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(64):
    task = paint_eval.make_task("a large red circle", rng, R)
    assert list(task.boxes) == ["a large red circle"]
    assert task.colors == {"a large red circle": "red"}
    top, left, bottom, right = task.boxes["a large red circle"]
    assert (bottom - top, right - left) == (HALF, HALF) and top % HALF == 0 and left % HALF == 0
    seen.add((top, left))
  assert seen == {(0, 0), (0, HALF), (HALF, 0), (HALF, HALF)}  # every quadrant is drawn
  # The phrase is the prompt's tokens from the article on: [BOS] a large red circle [EOS].
  assert paint_lib.phrase_positions(_tokenizer(), "a large red circle", "a large red circle") == [
      1, 2, 3, 4]


@pytest.mark.parametrize("relation, first_side", [
    ("to the left of", "left"), ("to the right of", "right"), ("above", "top"),
    ("below", "bottom")])
def test_two_objects_are_painted_on_the_sides_their_relation_names(relation, first_side):
  prompt = f"a small blue square {relation} a large green triangle"
  tok = _tokenizer()
  rng = np.random.default_rng(1)
  halves = set()
  for _ in range(32):
    task = paint_eval.make_task(prompt, rng, R)
    (pa, a), (pb, b) = task.boxes.items()
    assert (pa, pb) == ("a small blue square", "a large green triangle")
    assert task.colors == {pa: "blue", pb: "green"}
    horizontal = first_side in ("left", "right")
    # Same half across the relation's axis, opposite quadrants along it.
    assert (a[0], a[2]) == (b[0], b[2]) if horizontal else (a[1], a[3]) == (b[1], b[3])
    halves.add(a[0] if horizontal else a[1])
    ahead = {"left": a[1] < b[1], "right": a[1] > b[1], "top": a[0] < b[0],
             "bottom": a[0] > b[0]}[first_side]
    assert ahead
    # Each phrase is found once in the prompt, article included.
    n = len(tok.tokens(prompt))
    assert paint_lib.phrase_positions(tok, prompt, pa) == [1, 2, 3, 4]
    assert paint_lib.phrase_positions(tok, prompt, pb) == [n - 5, n - 4, n - 3, n - 2]
  assert halves == {0, HALF}  # both halves are used


def _image(*objects):
  return shapes_lib.render(tuple(objects), R)


def test_inside_is_the_centroid_of_the_one_object_of_each_colour():
  task = paint_eval.PaintTask("a small red square", {"a small red square": (0, 0, HALF, HALF)},
                              {"a small red square": "red"})
  # A 6x6 square at (x0, y0) = (9, 2) has its centroid at (y, x) = (4.5, 11.5): inside.
  assert paint_eval.inside(_image(shapes_lib.ShapeObject("red", "square", "small", 9, 2, 6)), task)
  # At x0 = 12 the centroid is at x = 14.5... still inside; at x0 = 14, x = 16.5: outside.
  assert paint_eval.inside(_image(shapes_lib.ShapeObject("red", "square", "small", 12, 2, 6)), task)
  assert not paint_eval.inside(
      _image(shapes_lib.ShapeObject("red", "square", "small", 14, 2, 6)), task)
  # Two red objects (or none) fail even when one is inside.
  assert not paint_eval.inside(_image(shapes_lib.ShapeObject("red", "square", "small", 2, 2, 6),
                                      shapes_lib.ShapeObject("red", "square", "small", 22, 22, 6)),
                               task)
  assert not paint_eval.inside(_image(shapes_lib.ShapeObject("blue", "square", "small", 2, 2, 6)),
                               task)


def test_fraction_with_error_is_the_binomial_standard_error():
  p, se = paint_eval.fraction_with_error([True] * 9 + [False])
  assert p == pytest.approx(0.9) and se == pytest.approx(np.sqrt(0.9 * 0.1 / 10))
