r"""Generates images from text prompts with a trained vqd_jax run or a pretrained checkpoint.

  python -m vqd_jax.sample --workdir runs/quickstart/diffusion --prompt "a large red circle" \
      --num-samples 8 --steps 50 --guidance 3 --truncation 0.9 --seed 0 --out samples/

  # A diffusers VQ-Diffusion folder (e.g. microsoft/vq-diffusion-ithq, downloaded beforehand):
  python -m vqd_jax.sample --pretrained vq-diffusion-ithq --prompt "teddy bear playing in the pool" \
      --steps 100 --guidance 5 --out samples/

  # Paint-with-words: put the phrase where the mask is white (any size; grey = partial).
  python -m vqd_jax.sample --workdir runs/quickstart/diffusion --prompt "a large red circle" \
      --paint "a large red circle=top_left.png" --paint-weight 0.5 --out samples/

  # An autoregressive run (configs/ar.py), and CTF's two stages (configs/ctf.py):
  python -m vqd_jax.sample --workdir runs/ar --prompt "a large red circle" --temperature 1 \
      --top-k 0 --guidance 2 --out samples/
  python -m vqd_jax.sample --workdir runs/ctf_fine --coarse-workdir runs/ctf_coarse \
      --prompt "a large red circle" --temperature 1.1 --fine-temperature 1.1 --out samples/

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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vqd_jax import configs_io, cpu_devices, out_of_memory, sample_inputs


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.sample", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  model = p.add_mutually_exclusive_group(required=True)
  model.add_argument("--workdir",
                     help="Workdir of a trained diffusion or AR run, or CTF's fine stage (python "
                          "-m vqd_jax.train ...); the run's own sampling settings are the "
                          "defaults.")
  model.add_argument("--pretrained",
                     help="Local diffusers VQ-Diffusion folder (model_index.json, vqvae/, "
                          "transformer/, text_encoder/, tokenizer/, scheduler/ ...), or one "
                          "exported by python -m vqd_jax.convert export.")
  src = p.add_mutually_exclusive_group()
  src.add_argument("--prompt", action="append",
                   help="A text prompt; repeat the flag for several prompts.")
  src.add_argument("--prompts-file", help="A text file with one prompt per line.")
  p.add_argument("--num-samples", type=configs_io.int_at_least(1), default=4,
                 help="Images per prompt (default 4).")
  p.add_argument("--steps", type=configs_io.int_at_least(1), default=None,
                 help="Denoising network evaluations; fewer than the trained T uses the exact "
                      "skip posterior (default: the run's sampling.num_steps; --pretrained: T).")
  p.add_argument("--guidance", type=configs_io.finite_float, default=None,
                 help="Classifier-free guidance scale s (1 = off): log p = lu + s (lc - lu) "
                      "(default: the run's sampling.guidance_scale; --pretrained: 5).")
  p.add_argument("--truncation", type=configs_io.fraction, default=None,
                 help="Keep the top-r probability mass of p(x0|x_t) at each step, 0 < r <= 1 "
                      "(default: the run's sampling.truncation_rate; --pretrained: 1).")
  p.add_argument("--purity", type=configs_io.finite_float, default=None,
                 help="Use the purity-prior sampler of Improved VQ-Diffusion with this weight "
                      "(default: off).")
  p.add_argument("--init-image",
                 help="Image file to inpaint or edit (resized to the model's resolution; "
                      "transparent pixels become white).")
  p.add_argument("--mask",
                 help="Inpainting mask file (white = regenerate, transparent = black = keep; any "
                      "token whose patch touches the white is regenerated); needs --init-image.")
  p.add_argument("--start-t", type=configs_io.int_at_least(0), default=None,
                 help="First timestep 0..T-1 for --init-image (default T-1; without --mask it is "
                      "required: the image is noised to this step and resampled).")
  p.add_argument("--paint", action="append", default=[], metavar="PHRASE=MASK.png",
                 help="Paint-with-words: draw PHRASE (words of every prompt) where MASK.png is "
                      "white (any size, resized by area to the token grid; grey = partial "
                      "strength; transparent = black). Paint the whole noun phrase, article "
                      "included ('a large red circle'): an unpainted word still carries the "
                      "object to the rest of the image. Repeat for several phrases.")
  p.add_argument("--paint-weight", type=float, default=0.5,
                 help="Strength w of --paint: w x f(t) x the largest cross-attention logit is "
                      "added to the painted tokens' logits, f(t) = log(1 + odds that a token is "
                      "masked at step t) (default 0.5, best measured on the quickstart run; "
                      "larger moves objects harder and loses more of them).")
  p.add_argument("--paint-outside", type=float, default=1.0,
                 help="The same bias times minus this on a phrase's tokens outside its mask "
                      "(default 1: pushed away from unpainted regions; 0: eDiff-I's rule, "
                      "inside only).")
  p.add_argument("--unpainted-guidance", type=float, default=1.0,
                 help="With --paint: the guidance scale where no mask is painted (default 1: no "
                      "guidance there, which keeps guidance from drawing the prompt's objects "
                      "outside their masks; the --guidance value: eDiff-I's uniform guidance). "
                      "Measured on shapes, whose unpainted regions are background; where they "
                      "hold scenery the prompt describes, a value nearer --guidance keeps it "
                      "guided.")
  ar = p.add_argument_group("AR runs (configs/ar.py)")
  ar.add_argument("--temperature", type=float, default=None,
                  help="Divide the logits by this before drawing each token (default: the run's "
                       "sampling.temperature).")
  ar.add_argument("--top-k", type=int, default=None,
                  help="Draw each token from the k most likely codes (0 = all; default: the "
                       "run's sampling.top_k).")
  ar.add_argument("--top-p", type=float, default=None,
                  help="Draw each token from the smallest set of codes holding this much "
                       "probability (1 = all; default: the run's sampling.top_p).")
  ar.add_argument("--no-cache", action="store_true",
                  help="Recompute the whole prefix at every position instead of using the "
                       "key-value cache (same images, N times the compute).")
  fine = p.add_argument_group("CTF (configs/ctf.py): --workdir is the fine stage")
  fine.add_argument("--coarse-workdir",
                    help="The first stage's run (coarse labels: AR or diffusion); its flags above "
                         "(--temperature ... or --steps ...) set how it samples.")
  fine.add_argument("--fine-temperature", type=float, default=None,
                    help="τ₂: divide the fine predictor's logits by this (default: the fine run's "
                         "sampling.fine_temperature).")
  fine.add_argument("--fine-top-k", type=int, default=None,
                    help="Draw each code from its k most likely (0 = all; default: the run's).")
  fine.add_argument("--fine-guidance", type=float, default=None,
                    help="Classifier-free guidance of the fine predictor (1 = off; default: the "
                         "run's sampling.fine_guidance_scale).")
  emb = p.add_argument_group("Runs conditioned on embedding sources (config.embeddings)")
  emb.add_argument("--image", metavar="REF.png",
                   help="A reference image for the run's clip_image source (any size; CLIP's "
                        "preprocessing resizes and crops it); without it that source is off.")
  emb.add_argument("--image-only", action="store_true",
                   help="Condition on --image alone: every text source reads as its null. The "
                        "prompt flags may then be left out (one prompt-less batch).")
  p.add_argument("--seed", type=configs_io.int_at_least(0, 2 ** 32), default=0,
                 help="Random seed, 0 <= seed < 2**32; same seed, same images.")
  p.add_argument("--batch-size", type=configs_io.int_at_least(1), default=64,
                 help="Images generated per device call.")
  p.add_argument("--step", type=configs_io.int_at_least(0), default=None,
                 help="Checkpoint step of --workdir (default: latest).")
  p.add_argument("--no-ema", action="store_true",
                 help="Use raw instead of EMA parameters of --workdir.")
  p.add_argument("--out", required=True, help="Output folder (created if missing).")
  return p


def generate_to_folder(pipe, prompts: Sequence[str], out: str, *, num_samples: int, settings,
                       seed: int, batch_size: int = 64, extra_info: dict | None = None,
                       **generate_kwargs) -> list[dict]:
  """Samples ``num_samples`` images per prompt with ``pipe`` (a ``VQDiffusionPipeline`` or an
  ``ARPipeline``; ``generate_kwargs`` go to its ``generate``, e.g. ``paint=``) into ``out``;
  returns the samples.jsonl records."""
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
      imgs = pipe.generate(pipe.params, [p for p, _ in padded], jax.random.fold_in(key, start),
                           settings, **generate_kwargs)[:len(chunk)]
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


def _load_model(load: Callable[[], Any], flags: str):
  """``load()``; a missing, damaged or mismatched run or folder exits with its message."""
  from vqd_jax import checkpoint  # pylint: disable=import-outside-toplevel
  try:
    return load()
  except (OSError, ValueError, checkpoint.CheckpointError) as e:
    raise SystemExit(f"{e} (flags: {flags})") from None


def load_pipeline(args, files: dict):
  """``(pipeline, settings, init image, mask, record fields)`` for the parsed arguments and the
  image files (:func:`vqd_jax.sample_inputs.read_image_files`)."""
  from vqd_jax.inference import VQDiffusionPipeline  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference import settings as settings_lib  # pylint: disable=import-outside-toplevel

  if args.pretrained:
    pipe = _load_model(lambda: VQDiffusionPipeline.from_pretrained(args.pretrained),
                       f"--pretrained {args.pretrained}")
    defaults = {"guidance_scale": 5.0, "truncation_rate": 1.0, "num_steps": None,
                "purity_weight": None}
    source = {"pretrained": args.pretrained}
  else:
    pipe = _load_model(lambda: VQDiffusionPipeline.from_run(
        args.workdir, step=args.step, use_ema=not args.no_ema), "--workdir, --step")
    defaults = pipe.sampling_defaults
    source = {"checkpoint_step": pipe.checkpoint_step}
  given = {"num_steps": args.steps, "guidance_scale": args.guidance,
           "truncation_rate": args.truncation, "purity_weight": args.purity}
  pick = {k: given[k] if given[k] is not None else defaults.get(k) for k in given}
  init, mask = (None if files[k] is None else
                settings_lib.fit_image(files[k], pipe.image_size, mask=k == "mask")
                for k in ("init", "mask"))
  try:
    settings = settings_lib.settings_for_call(
        pipe.num_timesteps, pick["num_steps"], pick["guidance_scale"], pick["truncation_rate"],
        pick["purity_weight"], args.start_t, has_init_image=init is not None,
        has_mask=args.mask is not None)
    if mask is not None:
      pipe.token_mask(mask)  # the mask checked before any sampling
  except ValueError as e:
    raise SystemExit(f"{e} (flags: --init-image, --mask, --start-t, --steps, --guidance, "
                     "--truncation, --purity; or the run's config.sampling)") from e
  return pipe, settings, init, mask, dict(source, init_image=args.init_image, mask=args.mask)


DIFFUSION_ONLY = ("steps", "truncation", "purity", "init_image", "mask", "start_t", "paint",
                  "image", "image_only")
AR_ONLY = ("temperature", "top_k", "top_p", "no_cache")
CTF_ONLY = ("fine_temperature", "fine_top_k", "fine_guidance")
EDITING = ("init_image", "mask", "start_t", "paint")


def _flags_set(args, names) -> list[str]:
  return ["--" + n.replace("_", "-") for n in names if getattr(args, n) not in (None, False, [])]


def load_ar_pipeline(args):
  """``(pipeline, settings, record fields)`` for an AR run."""
  from vqd_jax.inference.ar_pipeline import ARPipeline  # pylint: disable=import-outside-toplevel
  if _flags_set(args, DIFFUSION_ONLY):
    raise SystemExit(f"{args.workdir} is an AR run: {', '.join(_flags_set(args, DIFFUSION_ONLY))} "
                     "apply to diffusion runs only.")
  pipe = _load_model(lambda: ARPipeline.from_run(args.workdir, step=args.step,
                                                 use_ema=not args.no_ema), "--workdir, --step")
  try:
    settings = pipe.settings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                             guidance_scale=args.guidance,
                             use_cache=False if args.no_cache else None)
  except ValueError as e:
    raise SystemExit(f"{e} (flags: --temperature, --top-k, --top-p, --guidance)") from e
  return pipe, settings, {"checkpoint_step": pipe.checkpoint_step, "stage": "ar"}


def load_ctf_pipeline(args):
  """``(pipeline, settings, record fields)`` for CTF's two runs."""
  from vqd_jax.inference.ctf_pipeline import CTFPipeline  # pylint: disable=import-outside-toplevel
  if not args.workdir:
    raise SystemExit("--coarse-workdir goes with --workdir FINE_RUN (the fine stage).")
  if _flags_set(args, EDITING):
    raise SystemExit(f"{', '.join(_flags_set(args, EDITING))} do not apply to CTF runs.")
  pipe = _load_model(lambda: CTFPipeline.from_runs(args.coarse_workdir, args.workdir,
                                                   use_ema=not args.no_ema),
                     "--workdir, --coarse-workdir")
  ar_stage = pipe.coarse_run.config.stage == "ar"
  wrong = _flags_set(args, ("steps", "truncation", "purity") if ar_stage else AR_ONLY)
  if wrong:
    raise SystemExit(f"{', '.join(wrong)} do not apply to a {pipe.coarse_run.config.stage} "
                     "first stage.")
  coarse = (dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                 use_cache=False if args.no_cache else None) if ar_stage
            else dict(num_steps=args.steps, truncation_rate=args.truncation,
                      purity_weight=args.purity))
  fine = dict(temperature=args.fine_temperature, top_k=args.fine_top_k,
              guidance_scale=args.fine_guidance)
  try:
    settings = pipe.settings(fine=fine, guidance_scale=args.guidance, **coarse)
  except ValueError as e:
    raise SystemExit(f"{e} (flags: the sampling flags of both stages)") from e
  return pipe, settings, {"checkpoint_step": list(pipe.checkpoint_step), "stage": "ctf",
                          "coarse_workdir": args.coarse_workdir}


def load_diffusion_call(args, prompts: Sequence[str]):
  """``(pipeline, settings, record fields, generate keyword arguments)`` of a diffusion model,
  every input checked before sampling starts."""
  from vqd_jax import images as images_lib  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference import paint as paint_lib  # pylint: disable=import-outside-toplevel
  if _flags_set(args, AR_ONLY):
    raise SystemExit(f"{', '.join(_flags_set(args, AR_ONLY))} apply to AR runs only; "
                     f"{args.workdir or args.pretrained} is a diffusion model.")
  if args.image_only and not args.image:
    raise SystemExit("--image-only conditions on the reference image alone: give --image REF.png.")
  files = sample_inputs.read_image_files(args)
  pipe, settings, init, mask, extra = load_pipeline(args, files)
  kwargs = dict(init_image=init, inpaint_mask=mask)
  if args.image:
    kwargs.update(image=np.asarray(images_lib.on_background(files["image"]), np.uint8),
                  use_text=not args.image_only)
    try:
      pipe.embed(None, kwargs["image"], 1)
    except ValueError as e:
      raise SystemExit(f"{e} (flag: --image)") from e
    extra = dict(extra, image=args.image, image_only=args.image_only)
  if files["paint"]:
    try:  # every phrase, mask and the weight checked before any sampling
      pipe.paint_weights(prompts, files["paint"], args.paint_weight, args.paint_outside)
      paint_lib.guidance_scales(files["paint"], len(prompts), *pipe.token_grid,
                                settings.guidance_scale, args.unpainted_guidance)
    except ValueError as e:
      raise SystemExit(f"{e} (flags: --paint, --paint-weight, --paint-outside, "
                       "--unpainted-guidance)") from e
    options = dict(paint_weight=args.paint_weight, paint_outside=args.paint_outside,
                   unpainted_guidance=args.unpainted_guidance)
    extra = dict(extra, paint=files["paint_files"], **options)
    kwargs.update(paint=files["paint"], **options)
  return pipe, settings, extra, kwargs


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  cpu_devices.configure()  # before jax is imported
  prompts = sample_inputs.read_prompts(args)
  t0 = time.perf_counter()
  from vqd_jax.inference import settings as settings_lib  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference.loading import run_stage  # pylint: disable=import-outside-toplevel
  stage = _load_model(lambda: run_stage(args.workdir), "--workdir") if args.workdir else None
  if args.coarse_workdir and args.step is not None:
    raise SystemExit("--step picks one run's checkpoint; CTF samples each run's latest.")
  kwargs = {}
  if args.coarse_workdir or stage == "ctf_fine":
    if not args.coarse_workdir:
      raise SystemExit(f"{args.workdir} is CTF's fine stage: give its first stage with "
                       "--coarse-workdir COARSE_RUN.")
    pipe, settings, extra = load_ctf_pipeline(args)
  elif _flags_set(args, CTF_ONLY):
    raise SystemExit(f"{', '.join(_flags_set(args, CTF_ONLY))} apply to CTF runs only "
                     "(--workdir FINE_RUN --coarse-workdir COARSE_RUN).")
  elif stage == "ar":
    pipe, settings, extra = load_ar_pipeline(args)
  else:
    pipe, settings, extra, kwargs = load_diffusion_call(args, prompts)
  if getattr(pipe, "conditioner", None) is not None and not args.image_only:
    for note in settings_lib.prompt_notes(pipe.conditioner.tokenizer, prompts):
      print(note, file=sys.stderr)
  with out_of_memory.explained("sampling", out_of_memory.batch_size_fix(args.batch_size)):
    records = generate_to_folder(pipe, prompts, args.out, num_samples=args.num_samples,
                                 settings=settings, seed=args.seed, batch_size=args.batch_size,
                                 extra_info=extra, **kwargs)
  print(f"Wrote {len(records)} images, grid.png and samples.jsonl to {args.out} "
        f"in {time.perf_counter() - t0:.1f}s.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
