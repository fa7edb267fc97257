"""The shapes scorer: accurate on the data, robust to decoder blur/noise, and hard to fool."""

import re

import numpy as np
import pytest
from scipy import ndimage

from vqd_jax.data import shapes
from vqd_jax.evaluation import shapes as scorer

SWAP_RELATION = {"to the left of": "to the right of", "to the right of": "to the left of",
                 "above": "below", "below": "above"}


def examples(n, seed=21, resolution=32, **kw):
  return [shapes.generate_example(seed, i, resolution=resolution, **kw) for i in range(n)]


def degrade(image, rng):
  """What a VQ decode does to an image: a 3x3 box blur and gaussian noise (sigma 20/255)."""
  x = ndimage.uniform_filter(image.astype(np.float32), size=(3, 3, 1), mode="nearest")
  x += rng.normal(0.0, 20.0, x.shape)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def test_generated_data_scores_as_correct():
  data = examples(2000)
  scores = scorer.score_many(np.stack([e.image for e in data]), [e.caption for e in data])
  report = scorer.summarize(scores)
  assert report["score"] >= 0.99, [s.reason for s in scores if not s.correct][:5]
  assert report["num_single_object"] + report["num_two_object"] == 2000
  assert report["num_two_object"] > 800


@pytest.mark.parametrize("resolution,n", [(32, 500), (64, 150)])
def test_robust_to_blur_and_noise(resolution, n):
  rng = np.random.default_rng(0)
  data = examples(n, seed=22, resolution=resolution)
  scores = scorer.score_many([degrade(e.image, rng) for e in data], [e.caption for e in data])
  assert scorer.summarize(scores)["score"] >= 0.95


def test_mismatched_captions_are_rejected():
  data = examples(300, seed=23)
  shifted = [data[(i + 1) % len(data)].caption for i in range(len(data))]
  assert scorer.summarize(scorer.score_many([e.image for e in data], shifted))["score"] <= 0.05


def test_each_wrong_attribute_fails():
  data = [e for e in examples(200, seed=24) if e.relation is not None][:60]
  images = [e.image for e in data]
  swapped_relation = [e.caption.replace(e.relation, SWAP_RELATION[e.relation]) for e in data]
  scores = scorer.score_many(images, swapped_relation)
  assert not any(s.correct for s in scores)
  assert all(s.relation is False and s.color and s.shape and s.size for s in scores)

  swap_size = lambda c: re.sub(r"small|large", lambda m: {"small": "large",
                                                           "large": "small"}[m.group(0)], c)
  scores = scorer.score_many(images, [swap_size(e.caption) for e in data])
  assert not any(s.correct or s.size for s in scores)

  next_shape = {"circle": "square", "square": "triangle", "triangle": "circle"}
  swap_shape = lambda c: re.sub(r"circle|square|triangle", lambda m: next_shape[m.group(0)], c)
  scores = scorer.score_many(images, [swap_shape(e.caption) for e in data])
  assert not any(s.correct or s.shape for s in scores)


def test_blank_and_wrong_colour_and_extra_objects_fail():
  blank = np.zeros((32, 32, 3), np.uint8)
  result = scorer.score(blank, "a large red circle")
  assert not result.correct and not result.count and result.detected == ()

  ex = next(e for e in examples(50, seed=25) if e.relation is None)
  other = next(c for c in shapes.COLORS if c != ex.objects[0].color)
  recoloured = ex.caption.replace(ex.objects[0].color, other)
  assert not scorer.score(ex.image, recoloured).color

  # The described object plus an extra one elsewhere: the count is wrong.
  extra = ex.image.copy()
  obj = ex.objects[0]
  free_x = 1 if obj.x0 > 16 else 24
  free_y = 1 if obj.y0 > 16 else 24
  extra[free_y:free_y + 6, free_x:free_x + 6] = shapes.COLORS[other]
  result = scorer.score(extra, ex.caption)
  assert not result.correct and not result.count and result.color

  # The same colour drawn twice is not "one red object".
  twice = ex.image.copy()
  twice[free_y:free_y + 6, free_x:free_x + 6] = shapes.COLORS[obj.color]
  assert not scorer.score(twice, ex.caption).color


def test_shapes_outside_the_vocabulary_are_unknown():
  canvas = np.zeros((32, 32, 3), np.uint8)
  upside_down = canvas.copy()
  upside_down[8:21, 8:21][shapes.object_mask("triangle", 13)[::-1]] = (255, 0, 0)
  result = scorer.score(upside_down, "a large red triangle")
  assert not result.correct and not result.shape
  bar = canvas.copy()
  bar[12:17, 4:28] = (0, 255, 0)
  for shape in shapes.SHAPES:
    assert not scorer.score(bar, f"a large green {shape}").correct


def test_caption_parsing():
  parsed = scorer.parse_caption("A small blue square to the left of a large yellow triangle.")
  assert parsed.relation == "to the left of"
  assert parsed.objects == (scorer.ObjectSpec("small", "blue", "square"),
                            scorer.ObjectSpec("large", "yellow", "triangle"))
  for bad in ("a red circle", "a huge red circle", "a small red circle near a large blue square",
              "a small red circle above a large red square", ""):
    with pytest.raises(ValueError):
      scorer.parse_caption(bad)
  result = scorer.score(np.zeros((32, 32, 3), np.uint8), "a photo of a cat")
  assert not result.correct and "not a shapes caption" in result.reason


def test_summarize_counts_by_hand():
  make = lambda correct, n, relation=None, objects=(): scorer.ShapeScore(
      correct, correct, correct, correct, correct, relation, "", n, objects=objects)
  scores = [make(True, 1, objects=(("small circle", True),)),
            make(False, 1, objects=(("small circle", False),)),
            make(True, 2, True, (("large square", True), ("small circle", True))),
            make(False, 2, False), make(False, 2, True), make(False, 0)]
  report = scorer.summarize(scores)
  assert report["object_accuracy"] == {"large square": {"accuracy": 1.0, "count": 1},
                                       "small circle": {"accuracy": pytest.approx(2 / 3),
                                                        "count": 3}}
  assert report["score"] == pytest.approx(2 / 6)
  assert report["single_object_score"] == pytest.approx(1 / 2)
  assert report["two_object_score"] == pytest.approx(1 / 3)
  assert report["relation_accuracy"] == pytest.approx(2 / 3)
  assert report["num_unparseable"] == 1


def test_object_accuracy_names_the_kind_of_object_drawn_wrong():
  data = [e for e in examples(200, seed=25) if e.relation is not None][:40]
  other = {"circle": "square", "square": "triangle", "triangle": "circle"}
  captions, expected = [], {}
  for i, e in enumerate(data):
    first, second = e.objects
    wrong = i % 2 == 0  # every other caption asks for another shape of the first object
    asked = other[first.shape] if wrong else first.shape
    captions.append(e.caption.replace(first.phrase, f"a {first.size} {first.color} {asked}", 1))
    for kind, ok in ((f"{first.size} {asked}", not wrong), (f"{second.size} {second.shape}", True)):
      expected.setdefault(kind, []).append(ok)
  scores = scorer.score_many([e.image for e in data], captions)
  assert [s.objects[0][1] for s in scores] == [i % 2 == 1 for i in range(len(data))]
  report = scorer.summarize(scores)["object_accuracy"]
  assert report == {k: {"accuracy": pytest.approx(np.mean(v)), "count": len(v)}
                    for k, v in sorted(expected.items())}


def test_unreadable_or_malformed_images_count_every_described_object_as_wrong():
  result = scorer.score(np.zeros((32, 16, 3), np.uint8),
                        "a small red circle above a large blue square")
  assert result.objects == (("small circle", False), ("large square", False))
  assert scorer.score(np.zeros((32, 32, 3), np.uint8), "not a caption").objects == ()
