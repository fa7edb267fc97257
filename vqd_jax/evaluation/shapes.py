"""Scores generated shapes images against their captions: does the picture show what was asked?

An image is *correct* when it holds exactly the described objects and nothing else: one object per
described colour with the described shape and size and, for two objects, the described relation
(judged by which axis separates their centroids more). Blank images, wrong or extra colours,
unknown shapes, wrong sizes and swapped relations all fail. Detection is in
:mod:`vqd_jax.evaluation.shape_detect`.

  python -m vqd_jax.evaluate shapes --samples OUTDIR    # scores OUTDIR/samples.jsonl
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence

import numpy as np

from vqd_jax.data import shapes as shapes_lib
from vqd_jax.evaluation import shape_detect

ATTRIBUTES = ("count", "color", "shape", "size", "relation")
SCORE_FILE = "shapes_score.json"

_PHRASE = (rf"a ({'|'.join(shapes_lib.SIZES)}) ({'|'.join(shapes_lib.COLORS)}) "
           rf"({'|'.join(shapes_lib.SHAPES)})")
_CAPTION = re.compile(rf"^{_PHRASE}(?: ({'|'.join(shapes_lib.RELATIONS)}) {_PHRASE})?$")


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
  size: str
  color: str
  shape: str


@dataclasses.dataclass(frozen=True)
class ParsedCaption:
  """``relation`` relates ``objects[0]`` to ``objects[1]``; None for one object."""
  objects: tuple[ObjectSpec, ...]
  relation: str | None


def parse_caption(caption: str) -> ParsedCaption:
  """Parses the shapes grammar; raises ValueError for anything else."""
  text = " ".join(caption.lower().replace(".", " ").split())
  match = _CAPTION.match(text)
  if match is None:
    raise ValueError(f"{caption!r} is not a shapes caption (e.g. 'a large red circle' or 'a small "
                     "blue square to the left of a large yellow triangle').")
  g = match.groups()
  first = ObjectSpec(*g[0:3])
  if g[3] is None:
    return ParsedCaption((first,), None)
  second = ObjectSpec(*g[4:7])
  if second.color == first.color:
    raise ValueError(f"{caption!r} names the colour {first.color} twice; shapes captions use "
                     "distinct colours.")
  return ParsedCaption((first, second), g[3])


@dataclasses.dataclass(frozen=True)
class ShapeScore:
  """Verdict for one image. ``relation`` is None for one-object captions."""
  correct: bool
  count: bool
  color: bool
  shape: bool
  size: bool
  relation: bool | None
  reason: str
  num_objects: int
  detected: tuple[str, ...] = ()
  # Per described object: ("small circle", drawn right), where right means exactly one object of
  # its colour, with its shape and size. Tells which kinds of object a model gets wrong.
  objects: tuple[tuple[str, bool], ...] = ()


def _fail(reason: str, specs: Sequence[ObjectSpec] = ()) -> ShapeScore:
  """Every attribute and every described object (``specs``, none if unparseable) wrong."""
  n = len(specs)
  return ShapeScore(False, False, False, False, False, None if n < 2 else False, reason, n,
                    objects=tuple((f"{o.size} {o.shape}", False) for o in specs))


def score(image: np.ndarray, caption: str) -> ShapeScore:
  """Scores one image (uint8 ``[H, W, 3]``, square) against its caption."""
  try:
    parsed = parse_caption(caption)
  except ValueError as e:
    return _fail(str(e))
  n = len(parsed.objects)
  if image.ndim != 3 or image.shape[0] != image.shape[1]:
    return _fail(f"expected a square RGB image, got shape {image.shape}", parsed.objects)
  found = shape_detect.detect_objects(image)
  by_color: dict[str, list] = {}
  for obj in found:
    by_color.setdefault(obj.color, []).append(obj)
  matched = [by_color.get(spec.color, []) for spec in parsed.objects]
  # Per described object: exactly one object of its colour, with its shape and size.
  drawn_right = [len(m) == 1 and m[0].shape == spec.shape and m[0].size == spec.size
                 for spec, m in zip(parsed.objects, matched)]
  reasons = []
  count_ok = len(found) == n
  if not count_ok:
    reasons.append(f"expected {n} object(s), found {len(found)}"
                   + (f" ({', '.join(o.describe() for o in found)})" if found else ""))
  color_ok = all(len(m) == 1 for m in matched)
  if not color_ok:
    for spec, m in zip(parsed.objects, matched):
      if len(m) != 1:
        reasons.append(f"{len(m)} {spec.color} objects instead of 1")
  shape_ok = color_ok and all(m[0].shape == spec.shape for spec, m in zip(parsed.objects, matched))
  size_ok = color_ok and all(m[0].size == spec.size for spec, m in zip(parsed.objects, matched))
  if color_ok:
    for spec, m, ok in zip(parsed.objects, matched, drawn_right):
      if not ok:
        reasons.append(f"the {spec.color} object is a {m[0].size} {m[0].shape}, expected "
                       f"{spec.size} {spec.shape}")
  relation_ok = None
  if n == 2:
    relation_ok = False
    if color_ok:
      actual = shape_detect.relation_between(matched[0][0], matched[1][0])
      relation_ok = actual == parsed.relation
      if not relation_ok:
        reasons.append(f"{parsed.objects[0].color} is {actual} {parsed.objects[1].color}, "
                       f"expected {parsed.relation}")
  correct = count_ok and color_ok and shape_ok and size_ok and relation_ok in (None, True)
  objects = tuple((f"{spec.size} {spec.shape}", ok)
                  for spec, ok in zip(parsed.objects, drawn_right))
  return ShapeScore(correct, count_ok, color_ok, shape_ok, size_ok, relation_ok,
                    "ok" if correct else "; ".join(reasons), n,
                    tuple(o.describe() for o in found), objects)


# A shapes seed the training data never use: held-out prompts for every evaluation.
HELDOUT_SEED = 987_654_321


def heldout_prompts(num: int, resolution: int) -> list[str]:
  """Captions of ``num`` shapes examples drawn with ``HELDOUT_SEED``."""
  source = shapes_lib.ShapesSource(resolution=resolution, seed=HELDOUT_SEED, length=num)
  return [source[i]["caption"] for i in range(num)]


def score_many(images: Sequence[np.ndarray] | np.ndarray, captions: Sequence[str]
               ) -> list[ShapeScore]:
  """Scores ``images`` (``[B, H, W, 3]`` or a list) against ``captions`` (same length)."""
  if len(images) != len(captions):
    raise ValueError(f"Got {len(images)} images but {len(captions)} captions.")
  return [score(np.asarray(img), cap) for img, cap in zip(images, captions)]


def _mean(values: list) -> float | None:
  return float(np.mean(values)) if values else None


def summarize(scores: Sequence[ShapeScore]) -> dict:
  """Fraction fully correct (``score``), per-attribute accuracies, per-object-count scores and
  ``object_accuracy``: for each kind of described object ("small circle", ...), the fraction drawn
  right (its colour once, with its shape and size) and how many were asked for.

  Relation accuracy is over two-object captions only; captions outside the grammar count as wrong.
  """
  report = {"num_samples": len(scores), "score": _mean([s.correct for s in scores]) or 0.0}
  for name in ATTRIBUTES:
    values = [getattr(s, name) for s in scores if getattr(s, name) is not None]
    if name == "relation":
      values = [s.relation for s in scores if s.num_objects == 2]
    report[f"{name}_accuracy"] = _mean(values)
  for label, k in (("single_object", 1), ("two_object", 2)):
    group = [s.correct for s in scores if s.num_objects == k]
    report[f"{label}_score"] = _mean(group)
    report[f"num_{label}"] = len(group)
  report["num_unparseable"] = sum(s.num_objects == 0 for s in scores)
  by_kind: dict[str, list[bool]] = {}
  for s in scores:
    for kind, ok in s.objects:
      by_kind.setdefault(kind, []).append(ok)
  report["object_accuracy"] = {kind: {"accuracy": _mean(v), "count": len(v)}
                               for kind, v in sorted(by_kind.items())}
  return report


def load_samples(samples_dir: str) -> list[dict]:
  """The records of ``samples_dir/samples.jsonl`` (each with "file" and "prompt")."""
  path = os.path.join(samples_dir, "samples.jsonl")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist; write samples with `python -m vqd_jax.sample "
                            f"--out {samples_dir} ...` first.")
  records = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      record = json.loads(line)
      if "file" not in record or "prompt" not in record:
        raise ValueError(f"{path}:{number} lacks 'file' or 'prompt': {line.strip()[:200]}")
      records.append(record)
  if not records:
    raise ValueError(f"{path} has no samples.")
  return records


def evaluate_folder(samples_dir: str, *, write: bool = True) -> dict:
  """Scores every sample listed in ``samples_dir/samples.jsonl``; writes ``shapes_score.json``.

  An image that cannot be read scores as wrong (reason given) rather than stopping the evaluation.
  Returns :func:`summarize`'s report plus per-sample verdicts under ``"samples"``.
  """
  from vqd_jax.data import decode  # pylint: disable=import-outside-toplevel
  scores, details = [], []
  for record in load_samples(samples_dir):
    try:
      image = decode.read_image(os.path.join(samples_dir, record["file"]))
      result = score(image, record["prompt"])
    except (OSError, ValueError, SyntaxError) as e:
      specs = parse_caption(record["prompt"]).objects if _parses(record["prompt"]) else ()
      result = _fail(f"unreadable image: {type(e).__name__}: {e}", specs)
    scores.append(result)
    details.append({"file": record["file"], "prompt": record["prompt"],
                    "correct": result.correct, "reason": result.reason})
  report = summarize(scores)
  report["samples"] = details
  if write:
    with open(os.path.join(samples_dir, SCORE_FILE), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  return report


def _parses(caption: str) -> bool:
  try:
    parse_caption(caption)
    return True
  except ValueError:
    return False
