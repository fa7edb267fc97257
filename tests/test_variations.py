"""``evaluate variations``: its bookkeeping checked with a stand-in pipeline whose answers are known
(a perfect image variation returns the reference itself), and its refusal of runs without an image
source."""

import numpy as np
import pytest

from vqd_jax import evaluate
from vqd_jax.data import shapes as shapes_lib
from vqd_jax.evaluation import shapes as shapes_eval
from vqd_jax.evaluation import variations


class CopyingPipeline:
  """Returns the reference image when one is given, else a black image."""
  image_size = (32, 32)
  params = None

  def __init__(self):
    self.calls = []

  def generate(self, params, prompts, key, settings, image=None, use_text=True):
    del params, key, settings
    self.calls.append((len(prompts), image is not None, use_text))
    if image is not None:
      return np.asarray(image)
    return np.zeros((len(prompts),) + self.image_size + (3,), np.uint8)


def test_perfect_variations_score_as_the_references_do():
  pipe = CopyingPipeline()
  report, samples = variations.measure(pipe, None, 30, batch_size=7)
  refs, captions = variations.references(30, 32)
  # The scorer's verdict on the held-out references themselves is the truth a copy must reach.
  truth = np.mean([s.correct for s in shapes_eval.score_many(refs, captions)])
  assert truth > 0.9
  assert report["image_only"]["reference_caption_score"][0] == pytest.approx(truth)
  assert report["unconditional"]["reference_caption_score"] == (0.0, 0.0)
  assert report["text_only"]["reference_caption_score"] == (0.0, 0.0)
  np.testing.assert_array_equal(samples["image_only"], refs)  # order kept across padded chunks
  single = [i for i, c in enumerate(captions) if len(shapes_eval.parse_caption(c).objects) == 1]
  assert report["conflict"]["count"] == len(single) > 0
  assert report["conflict"]["follows"]["image"][0] == pytest.approx(truth, abs=0.1)
  assert {n for n, _, _ in pipe.calls} == {7}  # every call padded to one batch size
  assert (7, True, False) in pipe.calls and (7, False, False) in pipe.calls


def test_recolouring_and_which_colour_an_image_follows():
  caption, old, new = variations.recoloured("a large red circle", 0)
  assert old == "red" and new != "red" and caption == f"a large {new} circle"
  assert len({variations.recoloured("a small blue square", i)[2] for i in range(6)}) == 6
  a = shapes_lib.ShapesSource(seed=1, two_object_prob=0.0)[0]
  colour = shapes_eval.parse_caption(a["caption"]).objects[0].color
  other = next(c for c in shapes_lib.COLORS if c != colour)
  assert variations.colour_followed(a["image"], other, colour) == "image"
  assert variations.colour_followed(a["image"], colour, other) == "text"
  assert variations.colour_followed(np.zeros_like(a["image"]), colour, other) == "neither"
  pair = next(shapes_lib.ShapesSource(seed=2, two_object_prob=1.0)[i] for i in range(50))
  colours = [o.color for o in shapes_eval.parse_caption(pair["caption"]).objects]
  assert variations.colour_followed(pair["image"], colours[0], colours[1]) == "both"
  follows = variations.conflict_summary(["text", "text", "image", "neither"])
  assert follows["text"] == (0.5, pytest.approx(0.25))
  assert follows["both"] == (0.0, 0.0)


def test_a_run_without_an_image_source_is_refused(tiny_run, tmp_path):
  with pytest.raises(SystemExit, match="not conditioned on a clip_image source"):
    evaluate.main(["variations", "--workdir", tiny_run, "--out", str(tmp_path)])
  with pytest.raises(SystemExit, match="at least 1"):
    evaluate.main(["variations", "--workdir", tiny_run, "--out", str(tmp_path),
                   "--num-references", "0"])
