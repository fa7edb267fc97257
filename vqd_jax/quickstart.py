"""From nothing to pictures: trains a token model on the shapes data, samples, and scores it.

  python -m vqd_jax.quickstart --workdir runs/quickstart          # ~11 min on a 2-core CPU
  python -m vqd_jax.quickstart --workdir runs/long --long         # ~60 min, the longer preset
  python -m vqd_jax.quickstart --workdir runs/quickstart --model ar   # the same data, an AR model

Stages (each resumes if its workdir already holds a finished or interrupted run; the autoencoder
and tokens are shared by every --model):
  1. train the VQ autoencoder        configs/vqvae.py:<preset>     -> WORKDIR/vqvae
  2. encode the training images      python -m vqd_jax.encode      -> WORKDIR/tokens
  3. train the token model(s) of --model:
       vqd      configs/diffusion.py:<preset>                          -> WORKDIR/diffusion
       ar       configs/ar.py:<preset>                                 -> WORKDIR/ar
       ctf      configs/ctf.py:shapes_coarse, then :shapes_fine       -> WORKDIR/ctf_coarse, ctf_fine
       ctf-vqd  configs/ctf.py:shapes_coarse_vqd, then :shapes_fine   -> WORKDIR/ctf_coarse_vqd,
                                                                          ctf_fine
  4. sample held-out prompts         python -m vqd_jax.sample      -> WORKDIR/samples[_MODEL]
  5. score them                      python -m vqd_jax.evaluate shapes

The shapes presets give every model about the same minutes of training on this CPU (the
denoiser's 5,000 steps; docs/experiments.md). Config overrides, as ``--config.<field>=<value>`` of
``python -m vqd_jax.train``, one prefix per config:
  --vqvae.<field>=<value>       the autoencoder, e.g. --vqvae.train.num_steps=100
  --diffusion.<field>=<value>   the denoiser (vqd), e.g. --diffusion.train.num_steps=500
  --ar.<field>=<value>          the AR model (ar)
  --coarse.<field>=<value>      CTF's first stage (ctf, ctf-vqd)
  --fine.<field>=<value>        CTF's second stage (ctf, ctf-vqd)
They repeat, and are checked before anything trains.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from vqd_jax import configs_io, cpu_devices

STAGES = ("vqvae", "diffusion", "ar", "coarse", "fine")
MODELS = ("vqd", "ar", "ctf", "ctf-vqd")
# --model -> [(override prefix, config, run folder)] trained in order.
MODEL_STAGES = {
    "vqd": [("diffusion", "configs/diffusion.py:{preset}", "diffusion")],
    "ar": [("ar", "configs/ar.py:{preset}", "ar")],
    "ctf": [("coarse", "configs/ctf.py:shapes_coarse", "ctf_coarse"),
            ("fine", "configs/ctf.py:shapes_fine", "ctf_fine")],
    "ctf-vqd": [("coarse", "configs/ctf.py:shapes_coarse_vqd", "ctf_coarse_vqd"),
                ("fine", "configs/ctf.py:shapes_fine", "ctf_fine")],
}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.quickstart", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="runs/quickstart", help="Where all stages write.")
  p.add_argument("--long", action="store_true",
                 help="The longer preset (shapes_long): more steps, higher score (--model vqd).")
  p.add_argument("--model", choices=MODELS, default="vqd",
                 help="The token model: vqd (VQ-Diffusion, default), ar (autoregressive), ctf "
                      "(coarse labels by an AR model, then the codes in one pass) or ctf-vqd "
                      "(coarse labels by diffusion).")
  p.add_argument("--num-prompts", type=int, default=None,
                 help="Held-out shapes prompts to sample and score (default 300, with --long "
                      "1,000: one standard error of the score is then about 0.025 and 0.01).")
  # --vqvae.<field>=<value>, --diffusion.<field>=<value>, ... are taken out of the arguments first
  # (configs_io.pop_override_flags); the description above explains them.
  return p


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args, overrides = configs_io.parse_args_with_overrides(parser, argv, STAGES + ("config",))
  if overrides.pop("config"):
    parser.error("one prefix per config: override with --vqvae.<field>=<value> or "
                 "--diffusion.<field>=<value> (--ar., --coarse., --fine. for the other models).")
  num_prompts = args.num_prompts if args.num_prompts is not None else 1000 if args.long else 300
  if num_prompts < 1:
    raise SystemExit(f"--num-prompts must be at least 1, got {num_prompts}.")
  if args.long and args.model != "vqd":
    parser.error("--long is the denoiser's longer preset: use it with --model vqd.")
  unused = [f"--{prefix}." for prefix in ("diffusion", "ar", "coarse", "fine")
            if overrides[prefix] and prefix not in {p for p, _, _ in MODEL_STAGES[args.model]}]
  if unused:
    parser.error(f"{', '.join(unused)} overrides do not apply to --model {args.model}.")
  cpu_devices.configure(training=True)  # before jax is imported; training dominates
  preset = "shapes_long" if args.long else "shapes"
  try:  # every stage's overrides are checked before anything trains
    vq_cfg = configs_io.load_config(f"configs/vqvae.py:{preset}", overrides["vqvae"])
    stages = [(configs_io.load_config(spec.format(preset=preset), overrides[prefix]), folder)
              for prefix, spec, folder in MODEL_STAGES[args.model]]
  except ValueError as e:
    parser.error(str(e))
  from vqd_jax import encode, sample  # pylint: disable=import-outside-toplevel
  from vqd_jax.evaluation import shapes as shapes_eval  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference import load_autoencoder  # pylint: disable=import-outside-toplevel
  from vqd_jax.training import loop  # pylint: disable=import-outside-toplevel

  w = os.path.abspath(args.workdir)
  vq_dir, tok_dir = os.path.join(w, "vqvae"), os.path.join(w, "tokens")
  suffix = "" if args.model == "vqd" else "_" + args.model.replace("-", "_")
  out_dir = os.path.join(w, "samples" + suffix)
  timings = {}

  t = time.perf_counter()
  loop.train_and_evaluate(vq_cfg, vq_dir)
  timings["vqvae_train_s"] = time.perf_counter() - t

  t = time.perf_counter()
  first = stages[0][0]
  if not os.path.exists(os.path.join(tok_dir, "DONE")):
    vq = load_autoencoder(vq_dir)
    encode.encode_dataset(vq, first.data, tok_dir, num_examples=first.data.num_examples)
    open(os.path.join(tok_dir, "DONE"), "w", encoding="utf-8").close()
  timings["encode_s"] = time.perf_counter() - t

  for config, folder in stages:
    t = time.perf_counter()
    with config.unlocked():
      config.data.source = "tokens"
      config.data.path = tok_dir
      config.vqvae_workdir = vq_dir
    loop.train_and_evaluate(config, os.path.join(w, folder))
    timings[f"{folder}_train_s"] = time.perf_counter() - t

  t = time.perf_counter()
  pipe, settings = _pipeline(args.model, [os.path.join(w, f) for _, f in stages])
  prompts = shapes_eval.heldout_prompts(num_prompts, first.data.image_size)
  sample.generate_to_folder(pipe, prompts, out_dir, num_samples=1, settings=settings, seed=0)
  timings["sample_s"] = time.perf_counter() - t

  report = shapes_eval.evaluate_folder(out_dir)
  timings["total_min"] = sum(timings.values()) / 60
  with open(os.path.join(w, f"quickstart{suffix}.json"), "w", encoding="utf-8") as f:
    json.dump({"preset": preset, "model": args.model, "timings": timings, "score": report}, f,
              indent=2)
  print(json.dumps({k: round(v, 1) for k, v in timings.items()}))
  print(f"Samples: {out_dir}/grid.png")
  print(f"shapes score: {report['score']:.3f}")
  return 0


def _pipeline(model: str, run_dirs: list[str]):
  """``(pipeline, its settings)`` of the trained runs of ``model``."""
  # pylint: disable=import-outside-toplevel
  if model == "vqd":
    from vqd_jax import diffusion
    from vqd_jax.inference import VQDiffusionPipeline
    pipe = VQDiffusionPipeline.from_run(run_dirs[0])
    return pipe, diffusion.SamplerConfig(**pipe.sampling_defaults)
  if model == "ar":
    from vqd_jax.inference.ar_pipeline import ARPipeline
    pipe = ARPipeline.from_run(run_dirs[0])
    return pipe, pipe.settings()
  from vqd_jax.inference.ctf_pipeline import CTFPipeline
  pipe = CTFPipeline.from_runs(*run_dirs)
  return pipe, pipe.settings()

if __name__ == "__main__":
  sys.exit(main())
