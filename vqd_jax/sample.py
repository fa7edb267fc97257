r"""Generates images from text prompts with a trained vqd_jax run or a pretrained checkpoint.

  python -m vqd_jax.sample --workdir runs/quickstart/diffusion --prompt "a large red circle" \
      --num-samples 8 --steps 50 --guidance 3 --truncation 0.9 --seed 0 --out samples/

  # A diffusers VQ-Diffusion folder (e.g. microsoft/vq-diffusion-ithq, downloaded beforehand):
  python -m vqd_jax.sample --pretrained vq-diffusion-ithq --prompt "teddy bear playing in the pool" \
      --steps 100 --guidance 5 --out samples/

  # Inpainting: keep the image outside the mask (white = regenerate), resample the rest.
  python -m vqd_jax.sample --pretrained vq-diffusion-ithq --prompt "a red ball" \
      --init-image photo.png --mask mask.png --out samples/

Writes one PNG per sample, ``grid.png`` and ``samples.jsonl`` (file, prompt, seed and settings per
line) to ``--out``. Runs unchanged on CPU, GPU and TPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from vqd_jax import cpu_devices


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.sample", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  model = p.add_mutually_exclusive_group(required=True)
  model.add_argument("--workdir",
                     help="Workdir of a trained diffusion run (python -m vqd_jax.train ...).")
  model.add_argument("--pretrained",
                     help="Local diffusers VQ-Diffusion folder (model_index.json, vqvae/, "
                          "transformer/, text_encoder/, tokenizer/, scheduler/ ...), or one "
                          "exported by python -m vqd_jax.convert export.")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--prompt", action="append",
                   help="A text prompt; repeat the flag for several prompts.")
  src.add_argument("--prompts-file", help="A text file with one prompt per line.")
  p.add_argument("--num-samples", type=int, default=4, help="Images per prompt (default 4).")
  p.add_argument("--steps", type=int, default=None,
                 help="Denoising network evaluations; fewer than the trained T uses the exact "
                      "skip posterior (default: the run's sampling.num_steps; --pretrained: T).")
  p.add_argument("--guidance", type=float, default=None,
                 help="Classifier-free guidance scale s (1 = off): log p = lu + s (lc - lu) "
                      "(default: the run's sampling.guidance_scale; --pretrained: 5).")
  p.add_argument("--truncation", type=float, default=None,
                 help="Keep the top-r probability mass of p(x0|x_t) at each step, 0 < r <= 1 "
                      "(default: the run's sampling.truncation_rate; --pretrained: 1).")
  p.add_argument("--purity", type=float, default=None,
                 help="Use the purity-prior sampler of Improved VQ-Diffusion with this weight "
                      "(default: off).")
  p.add_argument("--init-image",
                 help="Image file to inpaint or edit (resized to the model's resolution).")
  p.add_argument("--mask",
                 help="Inpainting mask file (white / nonzero = regenerate; any token whose patch "
                      "touches it is regenerated); needs --init-image.")
  p.add_argument("--start-t", type=int, default=None,
                 help="First timestep 0..T-1 for --init-image (default T-1; without --mask it is "
                      "required: the image is noised to this step and resampled).")
  p.add_argument("--seed", type=int, default=0, help="Random seed; same seed, same images.")
  p.add_argument("--batch-size", type=int, default=64, help="Images generated per device call.")
  p.add_argument("--step", type=int, default=None,
                 help="Checkpoint step of --workdir (default: latest).")
  p.add_argument("--no-ema", action="store_true",
                 help="Use raw instead of EMA parameters of --workdir.")
  p.add_argument("--out", required=True, help="Output folder (created if missing).")
  return p


def read_prompts(args) -> list[str]:
  if args.prompts_file:
    with open(args.prompts_file, encoding="utf-8") as f:
      prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
      raise SystemExit(f"--prompts-file {args.prompts_file} has no prompts.")
    return prompts
  return list(args.prompt)


def generate_to_folder(task, params, prompts: Sequence[str], out: str, *, num_samples: int,
                       settings, seed: int, batch_size: int = 64, extra_info: dict | None = None
                       ) -> list[dict]:
  """Samples ``num_samples`` images per prompt into ``out``; returns the samples.jsonl records."""
  import jax  # pylint: disable=import-outside-toplevel
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  from vqd_jax import images as images_lib  # pylint: disable=import-outside-toplevel

  os.makedirs(out, exist_ok=True)
  jobs = [(p, i) for p in prompts for i in range(num_samples)]
  records, all_images = [], []
  key = jax.random.key(seed)
  with tqdm(total=len(jobs), desc="sampling", unit="img") as bar:
    for start in range(0, len(jobs), batch_size):
      chunk = jobs[start:start + batch_size]
      # Pad the last chunk to the batch size so every call reuses one compiled program.
      padded = chunk + [chunk[-1]] * (batch_size - len(chunk)) if len(jobs) > batch_size else chunk
      imgs = task.generate(params, [p for p, _ in padded], jax.random.fold_in(key, start),
                           settings)[:len(chunk)]
      for (prompt, i), img in zip(chunk, imgs):
        name = f"{len(records):05d}.png"
        images_lib.save_png(os.path.join(out, name), img)
        records.append({"file": name, "prompt": prompt, "sample_index": i, "seed": seed,
                        **dataclasses.asdict(settings), **(extra_info or {})})
        all_images.append(img)
      bar.update(len(chunk))
  cols = num_samples if num_samples > 1 else None
  images_lib.save_png(os.path.join(out, "grid.png"),
                      images_lib.image_grid(np.stack(all_images), cols=cols),
                      upscale=max(1, 128 // all_images[0].shape[0]))
  with open(os.path.join(out, "samples.jsonl"), "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return records


def _read_image(path: str, size: tuple[int, int], mode: str) -> np.ndarray:
  """An image file as uint8 ``[H, W, 3]`` (mode "RGB") or ``[H, W]`` ("L"), resized to ``size``."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(path) as img:
    img = img.convert(mode)
    if img.size != (size[1], size[0]):
      img = img.resize((size[1], size[0]), Image.BICUBIC if mode == "RGB" else Image.NEAREST)
    return np.asarray(img, np.uint8)


def _pipeline_task(args):
  """``(pipeline, task-like object with .generate, settings)`` for --pretrained or inpainting."""
  import functools  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  from vqd_jax.pipeline import VQDiffusionPipeline  # pylint: disable=import-outside-toplevel

  if args.pretrained:
    pipe = VQDiffusionPipeline.from_pretrained(args.pretrained)
    defaults = {"guidance": 5.0, "truncation": 1.0, "steps": None, "purity": None}
  else:
    pipe = VQDiffusionPipeline.from_run(args.workdir, step=args.step, use_ema=not args.no_ema)
    run = pipe.sampling_defaults
    defaults = {"guidance": run.get("guidance_scale", 1.0), "steps": run.get("num_steps"),
                "truncation": run.get("truncation_rate", 1.0), "purity": run.get("purity_weight")}
  pick = lambda name: getattr(args, name) if getattr(args, name) is not None else defaults[name]
  if args.mask and not args.init_image:
    raise SystemExit("--mask needs --init-image (the image whose unmasked part is kept).")
  if args.init_image and not args.mask and args.start_t is None:
    raise SystemExit("--init-image without --mask edits the whole image: give --start-t (how far "
                     "to noise it, 0..T-1), or a --mask to inpaint.")
  init = mask = None
  if args.init_image:
    init = _read_image(args.init_image, pipe.image_size, "RGB")
    mask = _read_image(args.mask, pipe.image_size, "L") if args.mask else None
  settings = pipe.sampler_config(pick("steps"), pick("guidance"), pick("truncation"),
                                 pick("purity"), args.start_t,
                                 "mask" if mask is not None or init is None else "noise")
  task = types.SimpleNamespace(generate=functools.partial(pipe.generate, init_image=init,
                                                          inpaint_mask=mask))
  return pipe, task, settings


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  cpu_devices.configure()  # before jax is imported
  prompts = read_prompts(args)
  t0 = time.perf_counter()
  if args.pretrained or args.init_image or args.mask:
    pipe, task, settings = _pipeline_task(args)
    source = {"pretrained": args.pretrained} if args.pretrained else {
        "checkpoint_step": pipe.checkpoint_step}
    extra = dict(source, init_image=args.init_image, mask=args.mask)
    records = generate_to_folder(task, pipe.params, prompts, args.out,
                                 num_samples=args.num_samples, settings=settings, seed=args.seed,
                                 batch_size=args.batch_size, extra_info=extra)
    print(f"Wrote {len(records)} images, grid.png and samples.jsonl to {args.out} "
          f"in {time.perf_counter() - t0:.1f}s.")
    return 0

  from vqd_jax import diffusion  # pylint: disable=import-outside-toplevel
  from vqd_jax.training.diffusion_task import load_trained  # pylint: disable=import-outside-toplevel

  task, params, step = load_trained(args.workdir, step=args.step, use_ema=not args.no_ema)
  defaults = task.config.sampling.to_dict()
  overrides = {"num_steps": args.steps, "guidance_scale": args.guidance,
               "truncation_rate": args.truncation, "purity_weight": args.purity}
  defaults.update({k: v for k, v in overrides.items() if v is not None})
  settings = diffusion.SamplerConfig(**defaults)
  records = generate_to_folder(task, params, prompts, args.out, num_samples=args.num_samples,
                               settings=settings, seed=args.seed, batch_size=args.batch_size,
                               extra_info={"checkpoint_step": step})
  print(f"Wrote {len(records)} images, grid.png and samples.jsonl to {args.out} "
        f"in {time.perf_counter() - t0:.1f}s.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
