"""``python -m vqd_jax.evaluate variations``: image variations and colour conflicts on a shapes run
conditioned on a ``clip_image`` source.

Held-out shapes images serve as references. Four conditions share the references and the seeds:

* ``image_only``: sampled from the reference's image embedding alone (every text source null);
  scored against the reference's caption with the shapes scorer.
* ``unconditional``: every source null, scored against the same captions: the level an image
  embedding that carried nothing would reach.
* ``text_only``: the reference's caption, no image: what the text alone reaches.
* ``conflict`` (one-object references): the caption with its colour changed, plus the reference
  image; each sample counts as following the text's colour, the image's, both or neither.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from vqd_jax.data import shapes as shapes_lib
from vqd_jax.evaluation import shape_detect
from vqd_jax.evaluation.chunks import sample_in_chunks
from vqd_jax.evaluation import shapes as shapes_eval
from vqd_jax.evaluation.paint import fraction_with_error

CONFLICT_OUTCOMES = ("text", "image", "both", "neither")


def references(num: int, resolution: int) -> tuple[np.ndarray, list[str]]:
  """``(uint8 images [num, H, W, 3], captions)``: held-out shapes examples (never trained on)."""
  source = shapes_lib.ShapesSource(resolution=resolution, seed=shapes_eval.HELDOUT_SEED,
                                   length=num)
  examples = [source[i] for i in range(num)]
  return np.stack([e["image"] for e in examples]), [e["caption"] for e in examples]


def recoloured(caption: str, index: int) -> tuple[str, str, str]:
  """``(new caption, old colour, new colour)`` of a one-object caption; the new colour is the
  ``index``-th of the palette's other colours (cycled)."""
  spec = shapes_eval.parse_caption(caption).objects[0]
  others = [c for c in shapes_lib.COLORS if c != spec.color]
  new = others[index % len(others)]
  return f"a {spec.size} {new} {spec.shape}", spec.color, new


def colour_followed(image: np.ndarray, text_colour: str, image_colour: str) -> str:
  """Which colour an image shows: ``text``, ``image``, ``both`` or ``neither``."""
  colours = {o.color for o in shape_detect.detect_objects(np.asarray(image))}
  has_text, has_image = text_colour in colours, image_colour in colours
  if has_text and has_image:
    return "both"
  return "text" if has_text else "image" if has_image else "neither"


def conflict_summary(outcomes: list[str]) -> dict[str, tuple[float, float]]:
  """Per outcome, its fraction of ``outcomes`` and the binomial standard error."""
  return {k: fraction_with_error([o == k for o in outcomes]) for k in CONFLICT_OUTCOMES}


def _sample(pipe, settings, prompts, images, use_text, seed, batch_size) -> np.ndarray:
  def chunk(indices, key):
    image = None if images is None else images[indices]
    return pipe.generate(pipe.params, [prompts[i] for i in indices], key, settings, image=image,
                         use_text=use_text)
  return sample_in_chunks(chunk, len(prompts), batch_size, seed)


def measure(pipe, settings, num: int, seed: int = 0, batch_size: int = 50) -> tuple[dict, dict]:
  """``(report, samples)``: the four conditions of the module docstring on ``num`` references."""
  resolution = pipe.image_size[0]
  refs, captions = references(num, resolution)
  blank = [""] * num
  samples = {
      "image_only": _sample(pipe, settings, blank, refs, False, seed, batch_size),
      "unconditional": _sample(pipe, settings, blank, None, False, seed, batch_size),
      "text_only": _sample(pipe, settings, captions, None, True, seed, batch_size),
  }
  report: dict[str, Any] = {"num_references": num}
  for name, images in samples.items():
    correct = [s.correct for s in shapes_eval.score_many(images, captions)]
    report[name] = {"reference_caption_score": fraction_with_error(correct)}
  single = [i for i, c in enumerate(captions) if len(shapes_eval.parse_caption(c).objects) == 1]
  recolours = [recoloured(captions[i], n) for n, i in enumerate(single)]
  samples["conflict"] = _sample(pipe, settings, [r[0] for r in recolours], refs[single], True,
                                seed, batch_size)
  outcomes = [colour_followed(img, new, old)
              for img, (_, old, new) in zip(samples["conflict"], recolours)]
  report["conflict"] = {"count": len(single), "follows": conflict_summary(outcomes),
                        "prompts": [r[0] for r in recolours[:20]]}
  samples["references"], samples["single"] = refs, np.asarray(single, int)
  return report, samples


def _grid(samples: dict, rows: int) -> np.ndarray:
  """Rows of (reference, image-only sample, text-only sample); then conflict rows of
  (reference, text + recoloured-caption sample)."""
  from vqd_jax import images as images_lib  # pylint: disable=import-outside-toplevel
  refs = samples["references"]
  cells = []
  for i in range(min(rows, len(refs))):
    cells += [refs[i], samples["image_only"][i], samples["text_only"][i]]
  for j, i in enumerate(samples["single"][:rows]):
    cells += [refs[i], samples["conflict"][j], np.zeros_like(refs[i])]
  return images_lib.image_grid(np.stack(cells), cols=6)


def run(args) -> int:
  """The subcommand (arguments from ``vqd_jax.evaluate.build_parser``)."""
  from vqd_jax import images as images_lib  # pylint: disable=import-outside-toplevel
  from vqd_jax.evaluation.paint_run import run_settings  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference import VQDiffusionPipeline  # pylint: disable=import-outside-toplevel
  if args.num_references < 1:
    raise SystemExit(f"--num-references must be at least 1, got {args.num_references}.")
  pipe = VQDiffusionPipeline.from_run(args.workdir)
  if "clip_image" not in pipe.embedders:
    raise SystemExit(f"evaluate variations: {args.workdir} is not conditioned on a clip_image "
                     "source; train one with --config.embeddings.clip_image.path=DIR.")
  report, samples = measure(pipe, run_settings(pipe), args.num_references, args.seed,
                            args.batch_size)
  report.update(workdir=args.workdir, checkpoint_step=pipe.checkpoint_step,
                settings=pipe.sampling_defaults)
  for name in ("image_only", "unconditional", "text_only"):
    p, se = report[name]["reference_caption_score"]
    print(f"{name}: reference caption reproduced {p:.3f} ± {se:.3f} (n={args.num_references})")
  follows = report["conflict"]["follows"]
  print(f"conflict (n={report['conflict']['count']}): colour follows " + ", ".join(
      f"{k} {follows[k][0]:.3f} ± {follows[k][1]:.3f}" for k in CONFLICT_OUTCOMES))
  os.makedirs(args.out, exist_ok=True)
  images_lib.save_png(os.path.join(args.out, "variations_grid.png"), _grid(samples, 8), upscale=4)
  path = os.path.join(args.out, "variations_report.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(f"report: {path}; grid: {os.path.join(args.out, 'variations_grid.png')} (rows: reference | "
        "image only | text only, then reference | recoloured text + reference image)")
  return 0
