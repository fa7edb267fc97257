"""``python -m vqd_jax.evaluate all``: sample a trained run on its dataset's evaluation captions
and report every metric its inputs allow.

  python -m vqd_jax.evaluate all --workdir runs/quickstart/diffusion --out runs/eval \\
      --num-samples 1000 --inception pt_inception-2015-12-05-6726825d.pth --clip runs/clip

Steps:

1. The evaluation examples of the run's own dataset (:mod:`vqd_jax.evaluation.heldout` states
   the rule: held-out shapes examples, or evenly spaced records of a folder dataset).
2. One sample per caption through ``python -m vqd_jax.sample`` (any run kind; ``--batch-size``
   images per call, the last call padded, so the sampler compiles once) into ``OUT/samples``
   (PNGs, ``samples.jsonl``, ``grid.png``).
3. The real images of those examples into ``OUT/reference`` (PNGs and a ``samples.jsonl`` naming
   each with its caption), unless ``--reference`` names a folder or an ``.npz`` to compare with.
4. The metrics, each computed by the code of its own subcommand: ``fid``, ``kid``, ``is`` (with
   ``--inception``), ``fid_clip`` (the Fréchet distance of CLIP image embeddings, with ``--clip``;
   not comparable with published FIDs), ``clip_score`` (with ``--clip``) and ``shapes_score``
   (shapes runs). One that cannot be measured is listed as skipped with the reason.

Writes ``OUT/metrics.json`` and ``OUT/metrics.md`` (:mod:`vqd_jax.evaluation.report`) and prints
the table. Exits non-zero, with a message, on bad input (before sampling) and when a metric
fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

import numpy as np

from vqd_jax.evaluation import report as report_lib
from vqd_jax.evaluation.inception_cli import WEIGHTS_HELP, _positive_int, load_model

# Flags of ``python -m vqd_jax.sample`` passed through to it (its own help text is shown).
SAMPLING_FLAGS = ("steps", "guidance", "truncation", "purity", "temperature", "top_k", "top_p",
                  "no_cache", "coarse_workdir", "fine_temperature", "fine_top_k",
                  "fine_guidance", "seed", "step", "no_ema")


def _sampling_actions() -> list[argparse.Action]:
  from vqd_jax import sample  # pylint: disable=import-outside-toplevel
  return [a for a in sample.build_parser()._actions  # pylint: disable=protected-access
          if a.dest in SAMPLING_FLAGS]


def add_parser(sub: Any) -> None:
  """Adds the ``all`` subcommand to ``sub`` (an argparse subparsers object)."""
  p = sub.add_parser(
      "all", help="Sample a run on its dataset's evaluation captions; report every metric.",
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="Workdir of a trained diffusion, AR or CTF "
                 "fine run (as for python -m vqd_jax.sample).")
  p.add_argument("--out", required=True, help="Folder for samples/, reference/ and the metrics.")
  p.add_argument("--num-samples", type=_positive_int, default=1000, metavar="N",
                 help="Evaluation captions, one sample each (default 1000; FIDs are comparable "
                      "only at equal N).")
  p.add_argument("--batch-size", type=_positive_int, default=50, metavar="B",
                 help="Images per sampling and feature call (default 50).")
  p.add_argument("--inception", default=None, metavar="PATH",
                 help=WEIGHTS_HELP + " Enables fid, kid and is.")
  p.add_argument("--clip", default=None, metavar="DIR",
                 help="A CLIP model folder, or a contrastive run with clip_text/ and clip_image/. "
                      "Enables clip_score and fid_clip.")
  p.add_argument("--reference", default=None, metavar="DIR_OR_NPZ",
                 help="Compare with these images (a folder), or Inception statistics (mu, sigma) "
                      "or features (an .npz), instead of the evaluation examples' own images.")
  p.add_argument("--splits", type=_positive_int, default=10,
                 help="Inception Score splits (default 10; at most N).")
  p.add_argument("--no-progress", action="store_true", help="Hide the feature progress bars.")
  group = p.add_argument_group("sampling, as python -m vqd_jax.sample takes it (default: the "
                               "run's own config.sampling)")
  for action in _sampling_actions():
    group._add_action(action)  # pylint: disable=protected-access


def _sampling_argv(args) -> list[str]:
  argv = []
  for action in _sampling_actions():
    value = getattr(args, action.dest)
    if value is not None and value is not False:
      argv += [action.option_strings[0]] + ([] if action.nargs == 0 else [str(value)])
  return argv


@dataclasses.dataclass
class Inputs:
  """What the metrics are measured from (loaded before sampling, so bad input fails early)."""
  args: Any
  samples: str
  reference: str | None = None
  reference_npz: tuple[Any, Any] | None = None  # ((mu, sigma), features or None)
  inception: Any = None
  clip: tuple[Any, Any] | None = None
  heldout: Any = None
  cache: dict = dataclasses.field(default_factory=dict)

  def features(self, model: Any, kind: str, folder: str):
    """``folder_features`` of ``folder`` under ``model`` (computed once per kind and folder)."""
    from vqd_jax.evaluation import features  # pylint: disable=import-outside-toplevel
    if (kind, folder) not in self.cache:
      self.cache[kind, folder] = features.folder_features(
          folder, model, self.args.batch_size, progress=not self.args.no_progress,
          desc=f"{kind} {os.path.basename(folder)}")
    return self.cache[kind, folder]


def _fail(message: str) -> SystemExit:
  return SystemExit(f"evaluate all: {message}")


def _load_reference_npz(path: str) -> tuple[Any, Any]:
  """``((mu, sigma), features or None)`` of an .npz of Inception statistics or features."""
  from vqd_jax.evaluation import fid  # pylint: disable=import-outside-toplevel
  try:
    return fid.load_statistics(path), None
  except ValueError as stats_error:
    try:
      features = fid.load_features(path)
    except ValueError:
      raise _fail(f"--reference {stats_error}; or an .npz of features.") from None
    return fid.statistics(features), features


def _check_reference(args, inputs: Inputs) -> None:
  if args.reference is None:
    return
  inputs.reference = os.path.abspath(args.reference)
  if os.path.isdir(args.reference):
    return
  if not (os.path.isfile(args.reference) and args.reference.lower().endswith(".npz")):
    raise _fail(f"--reference {args.reference} is neither a folder nor an .npz file.")
  inputs.reference_npz = _load_reference_npz(args.reference)


def _load_models(args, inputs: Inputs) -> None:
  from vqd_jax.evaluation import clip_score  # pylint: disable=import-outside-toplevel
  if args.inception:
    inputs.inception = load_model("all", args.inception)
  if args.clip:
    try:
      inputs.clip = clip_score.load_clip_scorer(args.clip)
    except (OSError, ValueError, ImportError) as e:
      raise _fail(f"--clip {e}") from e


def prepare(args) -> Inputs:
  """Checks the flags, loads the networks and the evaluation examples; exits on bad input."""
  from vqd_jax.evaluation import heldout  # pylint: disable=import-outside-toplevel
  if args.num_samples < 2:
    raise _fail(f"--num-samples {args.num_samples}: the metrics need at least 2 samples.")
  inputs = Inputs(args, os.path.join(os.path.abspath(args.out), "samples"))
  _check_reference(args, inputs)
  try:
    inputs.heldout = heldout.run_examples(args.workdir, args.num_samples, args.step)
  except (OSError, ValueError, KeyError) as e:
    raise _fail(str(e)) from e
  _load_models(args, inputs)
  return inputs


def sample_captions(args, inputs: Inputs) -> list[dict]:
  """Samples one image per evaluation caption into ``OUT/samples``; returns its records."""
  from vqd_jax import sample  # pylint: disable=import-outside-toplevel
  from vqd_jax.evaluation.shapes import load_samples  # pylint: disable=import-outside-toplevel
  prompts = os.path.join(args.out, "prompts.txt")
  with open(prompts, "w", encoding="utf-8") as f:
    f.writelines(" ".join(c.split()) + "\n" for c in inputs.heldout.captions)
  sample.main(["--workdir", args.workdir, "--prompts-file", prompts, "--num-samples", "1",
               "--batch-size", str(args.batch_size), "--out", inputs.samples,
               *_sampling_argv(args)])
  return load_samples(inputs.samples)


def write_reference(out: str, images: np.ndarray, captions: list[str], indices: list[int]) -> str:
  """The reference images as PNGs in ``out/reference`` with a ``samples.jsonl`` naming them."""
  from vqd_jax import images as images_lib  # pylint: disable=import-outside-toplevel
  folder = os.path.join(os.path.abspath(out), "reference")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "samples.jsonl"), "w", encoding="utf-8") as f:
    for i, (image, caption, index) in enumerate(zip(images, captions, indices)):
      images_lib.save_png(os.path.join(folder, f"{i:05d}.png"), image)
      f.write(json.dumps({"file": f"{i:05d}.png", "prompt": caption, "index": index}) + "\n")
  return folder


def run(args) -> int:
  """The subcommand (arguments from :func:`add_parser`)."""
  from vqd_jax.evaluation import all_metrics  # pylint: disable=import-outside-toplevel
  inputs = prepare(args)
  os.makedirs(args.out, exist_ok=True)
  records = sample_captions(args, inputs)
  held = inputs.heldout
  if inputs.reference is None:
    inputs.reference = write_reference(args.out, held.images, held.captions, held.indices)
  rows = [all_metrics.measure(name, inputs) for name in all_metrics.ROWS]
  settings = {k: v for k, v in records[0].items() if k not in ("file", "prompt", "sample_index")}
  header = {"workdir": os.path.abspath(args.workdir), "samples": inputs.samples,
            "reference": inputs.reference, "num_samples": len(records), "seed": args.seed,
            "batch_size": args.batch_size, "sampling": settings,
            "data": {"source": held.source, "rule": held.rule, "origin": held.origin,
                     "skipped_indices": held.skipped},
            "inception": args.inception and os.path.abspath(args.inception),
            "clip": args.clip and os.path.abspath(args.clip)}
  json_path, md_path = report_lib.write(args.out, header, rows)
  print(report_lib.markdown(rows), end="")
  print(f"metrics: {json_path} and {md_path}")
  failed = [r.metric for r in rows if (r.skipped or "").startswith(all_metrics.FAILED)]
  if failed:
    print(f"evaluate all: {', '.join(failed)} failed (reasons above).")
  return 1 if failed else 0
