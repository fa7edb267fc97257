"""The metrics of ``python -m vqd_jax.evaluate all``, one function each, over the written folders.

Each takes the command's :class:`vqd_jax.evaluation.all_cli.Inputs` (samples folder, reference,
loaded networks) and returns a :class:`vqd_jax.evaluation.report.Row`, or raises
:class:`vqd_jax.evaluation.report.Skipped` naming the missing input. The figures come from the
functions the single-metric subcommands use (``inception_cli.fid_of`` / ``kid_of`` / ``is_of``,
``clip_score.score_folder``, ``shapes.evaluate_folder``), so each equals its subcommand's on the
same folders with the same settings.
"""

from __future__ import annotations

import os
from typing import Any

from vqd_jax.evaluation import inception_cli
from vqd_jax.evaluation.report import Row, Skipped

FAILED = "failed: "
NO_INCEPTION = "no --inception given"
NO_CLIP = "no --clip given"
KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 0  # evaluate kid's defaults
IS_SEED = 2020  # evaluate is's default shuffle seed


def _rank_note(n: int, dims: int) -> str:
  if n > dims:
    return ""
  return (f"; {n} samples in {dims} dimensions: a rank-deficient covariance, so compare only at "
          "equal n")


def _reference_stats(inputs: Any, model: Any, kind: str):
  """``(mu, sigma, reference features or None, how many reference images)``."""
  from vqd_jax.evaluation import fid  # pylint: disable=import-outside-toplevel
  if inputs.reference_npz is not None:
    (mu, sigma), features = inputs.reference_npz
    return mu, sigma, features, None
  reference = inputs.features(model, kind, inputs.reference)
  mu, sigma = fid.statistics(reference.pool)
  return mu, sigma, reference.pool, len(reference.pool)


def fid_row(inputs: Any) -> Row:
  if inputs.inception is None:
    raise Skipped(NO_INCEPTION)
  samples = inputs.features(inputs.inception, "inception", inputs.samples)
  mu, sigma, _, n_ref = _reference_stats(inputs, inputs.inception, "inception")
  value = inception_cli.fid_of(samples.pool, mu, sigma)
  against = f"{n_ref} reference images" if n_ref else f"statistics {inputs.reference}"
  return Row("fid", value, n=len(samples.pool), notes=f"Inception pool features; against "
             f"{against}{_rank_note(len(samples.pool), samples.pool.shape[1])}")


def kid_row(inputs: Any) -> Row:
  if inputs.inception is None:
    raise Skipped(NO_INCEPTION)
  if inputs.reference_npz is not None and inputs.reference_npz[1] is None:
    raise Skipped("the --reference .npz holds statistics; KID needs reference images or features")
  samples = inputs.features(inputs.inception, "inception", inputs.samples)
  _, _, reference, _ = _reference_stats(inputs, inputs.inception, "inception")
  mean, std, size = inception_cli.kid_of(samples.pool, reference, KID_SUBSETS, KID_SUBSET_SIZE,
                                         KID_SEED)
  return Row("kid", mean, std, f"std over {KID_SUBSETS} subsets of {size}", len(samples.pool),
             f"Inception pool features; against {len(reference)} reference feature vectors")


def is_row(inputs: Any) -> Row:
  if inputs.inception is None:
    raise Skipped(NO_INCEPTION)
  samples = inputs.features(inputs.inception, "inception", inputs.samples)
  splits = min(inputs.args.splits, len(samples.logits))
  mean, std = inception_cli.is_of(inputs.inception, samples.logits, splits, IS_SEED)
  return Row("is", mean, std, f"std over {splits} splits", len(samples.logits),
             f"logits without the fc bias; shuffled with seed {IS_SEED}")


def fid_clip_row(inputs: Any) -> Row:
  from vqd_jax.evaluation import clip_features  # pylint: disable=import-outside-toplevel
  if inputs.clip is None:
    raise Skipped(NO_CLIP)
  if inputs.reference_npz is not None:
    raise Skipped("the --reference .npz holds Inception statistics or features; CLIP features "
                  "need reference images")
  model = clip_features.ClipImageFeatures(inputs.clip[1], inputs.args.clip)
  samples = inputs.features(model, "clip", inputs.samples)
  mu, sigma, _, n_ref = _reference_stats(inputs, model, "clip")
  value = inception_cli.fid_of(samples.pool, mu, sigma)
  return Row("fid_clip", value, n=len(samples.pool), notes=(
      f"{clip_features.note(inputs.args.clip)}; against {n_ref} reference images"
      f"{_rank_note(len(samples.pool), samples.pool.shape[1])}"))


def clip_score_row(inputs: Any) -> Row:
  from vqd_jax.evaluation import clip_score  # pylint: disable=import-outside-toplevel
  if inputs.clip is None:
    raise Skipped(NO_CLIP)
  result = clip_score.score_folder(inputs.samples, inputs.args.clip, scorer=inputs.clip)
  unreadable = f"; {len(result['unreadable'])} unreadable" if result["unreadable"] else ""
  return Row("clip_score", result["clip_score"], result["standard_error"], "standard error",
             result["num_samples"], f"{result['model']}: {os.path.abspath(inputs.args.clip)}"
             f"{unreadable}")


def shapes_score_row(inputs: Any) -> Row:
  # pylint: disable=import-outside-toplevel
  from vqd_jax.evaluation import shapes as shapes_eval
  from vqd_jax.evaluation.paint import fraction_with_error
  if inputs.heldout.source != "shapes":
    raise Skipped(f"the run's data is not the shapes dataset (source={inputs.heldout.source})")
  result = shapes_eval.evaluate_folder(inputs.samples)
  value, error = fraction_with_error([s["correct"] for s in result["samples"]])
  parts = [f"{label} {result[key]:.3f}" for label, key in (
      ("one-object", "single_object_score"), ("two-object", "two_object_score"))
           if result[key] is not None]
  return Row("shapes_score", value, error, "binomial standard error", result["num_samples"],
             "fraction fully correct" + (f" ({', '.join(parts)})" if parts else ""))


ROWS = {"fid": fid_row, "kid": kid_row, "is": is_row, "fid_clip": fid_clip_row,
        "clip_score": clip_score_row, "shapes_score": shapes_score_row}


def measure(name: str, inputs: Any) -> Row:
  """The row of metric ``name``: measured, skipped with its reason, or failed with the error."""
  try:
    return ROWS[name](inputs)
  except Skipped as e:
    return Row(name, skipped=str(e))
  except (OSError, ValueError) as e:
    return Row(name, skipped=f"{FAILED}{e}")
