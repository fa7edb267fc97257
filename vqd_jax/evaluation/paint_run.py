"""``python -m vqd_jax.evaluate paint``: paint-with-words measured on a shapes run.

For held-out prompts it samples each prompt unpainted (weight 0) and at every ``--weights`` value
with the same seeds, and reports per weight the fraction of images whose objects lie in their
painted boxes (``vqd_jax.evaluation.paint``) and the shapes score, with standard errors.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from vqd_jax.evaluation import paint as paint_eval
from vqd_jax.evaluation import shapes as shapes_eval
from vqd_jax.evaluation.chunks import sample_in_chunks

def run_settings(pipe) -> Any:
  """The ``SamplerConfig`` of a run's own ``config.sampling`` (how the run is scored)."""
  from vqd_jax.inference import settings as settings_lib  # pylint: disable=import-outside-toplevel
  d = pipe.sampling_defaults
  return settings_lib.sampler_config(pipe.num_timesteps, d.get("num_steps"),
                                     d.get("guidance_scale", 1.0), d.get("truncation_rate", 1.0),
                                     d.get("purity_weight"))


def _sample(pipe, tasks, weight, args, settings, resolution) -> np.ndarray:
  def chunk(indices, key):
    paint = [{p: paint_eval.box_mask(b, resolution) for p, b in tasks[i].boxes.items()}
             for i in indices]
    return pipe.generate(pipe.params, [tasks[i].prompt for i in indices], key, settings,
                         paint=paint, paint_weight=weight, paint_outside=args.outside,
                         unpainted_guidance=args.unpainted_guidance)
  return sample_in_chunks(chunk, len(tasks), args.batch_size, args.seed)


def _summary(tasks, images) -> dict[str, Any]:
  row: dict[str, Any] = {}
  for name, keep in (("one_object", 1), ("two_objects", 2), ("all", None)):
    idx = [i for i, t in enumerate(tasks) if keep is None or len(t.boxes) == keep]
    if not idx:
      continue
    inside = [paint_eval.inside(images[i], tasks[i]) for i in idx]
    correct = [shapes_eval.score(images[i], tasks[i].prompt).correct for i in idx]
    row[name] = dict(count=len(idx), inside=paint_eval.fraction_with_error(inside),
                     shapes_score=paint_eval.fraction_with_error(correct))
  return row


def _grid(tasks, unpainted, painted, resolution) -> np.ndarray:
  """Rows of (painted boxes in the objects' colours, unpainted sample, painted sample)."""
  from vqd_jax import images as images_lib  # pylint: disable=import-outside-toplevel
  from vqd_jax.data.shapes import COLORS  # pylint: disable=import-outside-toplevel
  cells = []
  for task, a, b in zip(tasks, unpainted, painted):
    canvas = np.zeros((resolution, resolution, 3), np.uint8)
    for phrase, box in task.boxes.items():
      canvas[paint_eval.box_mask(box, resolution) > 0] = COLORS[task.colors[phrase]]
    cells += [canvas, a, b]
  return images_lib.image_grid(np.stack(cells), cols=6)


def run(args) -> int:
  """The subcommand (arguments from ``vqd_jax.evaluate.build_parser``)."""
  from vqd_jax import images as images_lib  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference import VQDiffusionPipeline  # pylint: disable=import-outside-toplevel
  try:
    weights = sorted({float(w) for w in args.weights.split(",")} - {0.0})
  except ValueError as e:
    raise SystemExit(f"--weights {args.weights!r}: give numbers, e.g. 0.5,1,2.") from e
  pipe = VQDiffusionPipeline.from_run(args.workdir)
  resolution = pipe.image_size[0]
  settings = run_settings(pipe)
  rng = np.random.default_rng(args.seed)
  tasks = [paint_eval.make_task(p, rng, resolution)
           for p in shapes_eval.heldout_prompts(args.num_prompts, resolution)]
  report = {"workdir": args.workdir, "checkpoint_step": pipe.checkpoint_step,
            "num_prompts": len(tasks), "settings": pipe.sampling_defaults,
            "paint_outside": args.outside, "unpainted_guidance": args.unpainted_guidance,
            "weights": {}}
  results = {}
  for weight in [0.0] + weights:
    results[weight] = _sample(pipe, tasks, weight, args, settings, resolution)
    report["weights"][str(weight)] = row = _summary(tasks, results[weight])
    print(f"weight {weight:g}: " + "; ".join(
        f"{k} inside {v['inside'][0]:.3f} ± {v['inside'][1]:.3f}, shapes score "
        f"{v['shapes_score'][0]:.3f} ± {v['shapes_score'][1]:.3f} (n={v['count']})"
        for k, v in row.items()))
  os.makedirs(args.out, exist_ok=True)
  best = weights[-1] if weights else 0.0
  grid = _grid(tasks[:12], results[0.0][:12], results[best][:12], resolution)
  images_lib.save_png(os.path.join(args.out, "paint_grid.png"), grid, upscale=4)
  with open(os.path.join(args.out, "paint_report.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(f"report: {os.path.join(args.out, 'paint_report.json')}; grid (boxes | unpainted | "
        f"weight {best:g}): {os.path.join(args.out, 'paint_grid.png')}")
  return 0
