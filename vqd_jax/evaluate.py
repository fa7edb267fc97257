"""Evaluates generated samples.

  python -m vqd_jax.evaluate shapes --samples runs/quickstart/samples
  python -m vqd_jax.evaluate paint --workdir runs/quickstart/diffusion --out runs/paint
  python -m vqd_jax.evaluate prompt-switch --workdir runs/quickstart/diffusion --out runs/switch
  python -m vqd_jax.evaluate variations --workdir runs/sources --out runs/variations
  python -m vqd_jax.evaluate bound --workdir runs/quickstart/diffusion --out runs/bound
  python -m vqd_jax.evaluate clip --samples runs/quickstart/samples --clip runs/clip
  python -m vqd_jax.evaluate fid --samples DIR --reference DIR_OR_NPZ --inception WEIGHTS
  python -m vqd_jax.evaluate kid --samples DIR --reference DIR_OR_NPZ --inception WEIGHTS
  python -m vqd_jax.evaluate is --samples DIR --inception WEIGHTS
  python -m vqd_jax.evaluate all --workdir runs/quickstart/diffusion --out runs/eval \
      [--inception WEIGHTS] [--clip DIR] [--num-samples N]

``shapes`` reads SAMPLES/samples.jsonl (one JSON object per line with "file", relative to SAMPLES,
and "prompt"; ``python -m vqd_jax.sample`` writes it), checks every image against its prompt
(colours, shapes, sizes, object count and spatial relation), prints per-attribute accuracies and
writes SAMPLES/shapes_score.json. The last line printed is
``shapes score: <fraction fully correct>``.

``fid``, ``kid`` and ``is`` measure a folder of images under the FID Inception network (see
``python -m vqd_jax.evaluate fid --help``); the last line printed is ``fid <value>``,
``kid <mean>`` or ``is <mean>``; ``fid --features clip --clip DIR`` takes the distance over CLIP
image embeddings instead (``fid_clip``, not comparable with published FIDs).

``all`` samples a trained run on its own dataset's evaluation captions (held-out shapes prompts,
or evenly spaced records of a folder dataset), writes the samples and the real images, and
reports every metric its flags allow in OUT/metrics.json and OUT/metrics.md, each metric that
cannot be measured listed with the reason (see ``python -m vqd_jax.evaluate all --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from vqd_jax import cpu_devices, out_of_memory
from vqd_jax.evaluation import all_cli, inception_cli


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.evaluate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="metric", required=True, metavar="METRIC")
  shapes = sub.add_parser(
      "shapes", help="Score shapes samples against their prompts.",
      description="Score shapes samples against their prompts; see `python -m vqd_jax.evaluate "
                  "--help`.")
  shapes.add_argument("--samples", required=True, metavar="DIR",
                      help="Folder holding samples.jsonl and the images it lists.")
  shapes.add_argument("--output", default=None, metavar="FILE",
                      help="Where to write the JSON report (default: DIR/shapes_score.json).")
  shapes.add_argument("--show-failures", type=int, default=5, metavar="N",
                      help="Print the first N failing samples with the reason (default 5).")
  paint = sub.add_parser(
      "paint", help="Measure paint-with-words on a shapes run.",
      description="Samples held-out shapes prompts unpainted and painted (one quadrant per object, "
                  "on the sides the relation names) with the same seeds; prints, per weight, how "
                  "often the objects land in their boxes and the shapes score, with standard "
                  "errors; writes OUT/paint_report.json and OUT/paint_grid.png.")
  paint.add_argument("--workdir", required=True, help="Workdir of a trained shapes diffusion run.")
  paint.add_argument("--out", required=True, help="Folder for the report and the grid.")
  paint.add_argument("--weights", default="0.5", metavar="W[,W...]",
                     help="Paint weights to measure, comma-separated (0, unpainted, is always "
                          "measured; default 0.5).")
  paint.add_argument("--outside", type=float, default=1.0,
                     help="paint_outside of every painted sample (0: eDiff-I's rule, the phrase "
                          "drawn into its box only; default 1: also pushed out of the rest).")
  paint.add_argument("--unpainted-guidance", type=float, default=1.0,
                     help="Guidance scale outside the painted boxes (default 1: none there; the "
                          "run's guidance scale: eDiff-I's uniform guidance).")
  paint.add_argument("--num-prompts", type=int, default=200,
                     help="Held-out prompts, each sampled once per weight (default 200).")
  paint.add_argument("--batch-size", type=int, default=50, help="Images per sampling call.")
  paint.add_argument("--seed", type=int, default=0, help="Seed of the boxes and the samples.")
  switch = sub.add_parser(
      "prompt-switch", help="When does the text decide the image? (shapes runs)",
      description="Samples pairs of one-object prompts with prompt A for the first fraction f of "
                  "the steps and prompt B for the rest (f = 0 ... 1); prints how often the image "
                  "follows A, B or neither, and per t the share of each block's residual update "
                  "that comes from cross-attention; writes OUT/prompt_switch.json.")
  switch.add_argument("--workdir", required=True, help="Workdir of a trained shapes diffusion run.")
  switch.add_argument("--out", required=True, help="Folder for the report.")
  switch.add_argument("--num-pairs", type=int, default=100,
                      help="Prompt pairs, each sampled once per fraction (default 100).")
  switch.add_argument("--seed", type=int, default=0, help="Sampling seed.")
  clip = sub.add_parser(
      "clip", aliases=["clip-score"], help="CLIP score of samples against their prompts.",
      description="Mean of 100 * max(cos(image, text), 0) over the samples listed in "
                  "SAMPLES/samples.jsonl, with its standard error, under one CLIP model: a full "
                  "CLIP folder in the transformers layout, or a configs/clip.py run (its "
                  "clip_text/ and clip_image/ towers). Writes SAMPLES/clip_score.json.")
  clip.add_argument("--samples", required=True, metavar="DIR",
                    help="Folder holding samples.jsonl and the images it lists.")
  clip.add_argument("--clip", required=True, metavar="DIR",
                    help="CLIP model folder, or a contrastive run with clip_text/ and clip_image/.")
  clip.add_argument("--output", default=None, metavar="FILE",
                    help="Where to write the JSON report (default: DIR/clip_score.json).")
  variations = sub.add_parser(
      "variations", help="Image variations and colour conflicts (runs with a clip_image source).",
      description="Samples held-out shapes references from their image embedding alone, with "
                  "no input, and from their caption alone, and scores each against the "
                  "reference's caption; then samples one-object references with a recoloured "
                  "caption plus the reference image and counts whose colour the image takes. "
                  "Writes OUT/variations_report.json and OUT/variations_grid.png.")
  variations.add_argument("--workdir", required=True,
                          help="Workdir of a shapes diffusion run with a clip_image source.")
  variations.add_argument("--out", required=True, help="Folder for the report and the grid.")
  variations.add_argument("--num-references", type=int, default=1000,
                          help="Held-out reference images (default 1000).")
  variations.add_argument("--batch-size", type=int, default=50, help="Images per sampling call.")
  variations.add_argument("--seed", type=int, default=0, help="Sampling seed.")
  bound = sub.add_parser(
      "bound", help="Held-out variational bound per timestep (nats per token).",
      description="Encodes the run's held-out examples, draws x_t for every evaluated t and "
                  "measures each term of the variational bound under the run's denoiser (an "
                  "ensemble: each t by its expert); prints the mean per t-range and the whole "
                  "bound with standard errors; writes OUT/bound.json.")
  bound.add_argument("--workdir", required=True, help="Workdir of a trained diffusion run.")
  bound.add_argument("--out", required=True, help="Folder for the report.")
  bound.add_argument("--num-examples", type=int, default=1000,
                     help="Held-out examples, each measured once per evaluated t (default 1000).")
  bound.add_argument("--t-stride", type=int, default=1,
                     help="Evaluate every S-th timestep (default 1: all); the sum over t counts "
                          "each evaluated one S times.")
  bound.add_argument("--ranges", default=None, metavar="B[,B...]",
                     help="First timesteps of the t-ranges after the first, e.g. 25,75 (default: "
                          "an ensemble's own intervals, else T/4 and 3T/4).")
  bound.add_argument("--batch-size", type=int, default=100, help="Examples per denoiser call.")
  bound.add_argument("--seed", type=int, default=0, help="Seed of the noised tokens x_t.")
  inception_cli.add_parsers(sub)
  all_cli.add_parser(sub)
  return p


def _fmt(value) -> str:
  return "n/a" if value is None else f"{value:.3f}"


def run_shapes(args) -> int:
  from vqd_jax.evaluation import shapes as shapes_eval  # pylint: disable=import-outside-toplevel
  samples_dir = os.path.abspath(args.samples)
  try:
    report = shapes_eval.evaluate_folder(samples_dir, write=args.output is None)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"evaluate shapes: {e}") from e
  if args.output is not None:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  output = args.output or os.path.join(samples_dir, shapes_eval.SCORE_FILE)
  failures = [s for s in report["samples"] if not s["correct"]][:args.show_failures]
  for s in failures:
    print(f"  wrong: {s['file']}  {s['prompt']!r}: {s['reason']}")
  print(f"samples: {report['num_samples']} ({report['num_single_object']} one-object, "
        f"{report['num_two_object']} two-object, {report['num_unparseable']} unparseable prompts)")
  for name in shapes_eval.ATTRIBUTES:
    print(f"{name} accuracy: {_fmt(report[f'{name}_accuracy'])}")
  print(f"one-object score: {_fmt(report['single_object_score'])}")
  print(f"two-object score: {_fmt(report['two_object_score'])}")
  kinds = report["object_accuracy"]
  if kinds:
    print("objects drawn right: " + ", ".join(
        f"{kind} {_fmt(v['accuracy'])} (of {v['count']})" for kind, v in kinds.items()))
  print(f"report: {output}")
  print(f"shapes score: {report['score']:.3f}")
  return 0


def run_clip_score(args) -> int:
  from vqd_jax.evaluation import clip_score  # pylint: disable=import-outside-toplevel
  try:
    report = clip_score.score_folder(os.path.abspath(args.samples), args.clip)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"evaluate clip: {e}") from e
  output = args.output or os.path.join(args.samples, "clip_score.json")
  with open(output, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  if report["unreadable"]:
    print(f"unreadable, left out: {len(report['unreadable'])} ({report['unreadable'][:5]})")
  print(f"model: {report['model']}")
  print(f"report: {output}")
  print(f"standard error {report['standard_error']:.4f} (n={report['num_samples']})")
  print(f"clip {report['clip_score']:.4f}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if getattr(args, "batch_size", None) is None:  # no device calls in batches of its choosing
    return run_metric(args)
  with out_of_memory.explained(f"evaluate {args.metric}",
                               out_of_memory.batch_size_fix(args.batch_size)):
    return run_metric(args)


def run_metric(args) -> int:
  if args.metric == "shapes":
    return run_shapes(args)
  if args.metric == "prompt-switch":
    from vqd_jax.evaluation import prompt_switch  # pylint: disable=import-outside-toplevel
    return prompt_switch.run(args)
  if args.metric in ("clip", "clip-score"):
    return run_clip_score(args)
  if args.metric == "variations":
    from vqd_jax.evaluation import variations  # pylint: disable=import-outside-toplevel
    return variations.run(args)
  if args.metric == "bound":
    from vqd_jax.evaluation import bound  # pylint: disable=import-outside-toplevel
    return bound.run(args)
  if args.metric == "paint":
    from vqd_jax.evaluation import paint_run  # pylint: disable=import-outside-toplevel
    return paint_run.run(args)
  if args.metric == "all":
    cpu_devices.configure()  # before jax is imported: one device per core for sampling
    return all_cli.run(args)
  if args.metric in inception_cli.RUNS:
    return inception_cli.RUNS[args.metric](args)
  raise SystemExit(f"Unknown metric {args.metric!r}.")


if __name__ == "__main__":
  sys.exit(main())
