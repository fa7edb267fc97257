"""From nothing to pictures: trains both stages on the shapes data, samples, and scores the samples.

  python -m vqd_jax.quickstart --workdir runs/quickstart          # ~12 min on a 2-core CPU
  python -m vqd_jax.quickstart --workdir runs/long --long         # ~60 min, the longer preset

Stages (each resumes if its workdir already holds a finished or interrupted run):
  1. train the VQ autoencoder        configs/vqvae.py:<preset>     -> WORKDIR/vqvae
  2. encode the training images      python -m vqd_jax.encode      -> WORKDIR/tokens
  3. train the diffusion denoiser    configs/diffusion.py:<preset> -> WORKDIR/diffusion
  4. sample held-out prompts         python -m vqd_jax.sample      -> WORKDIR/samples
  5. score them                      python -m vqd_jax.evaluate shapes

Config overrides, as ``--config.<field>=<value>`` of ``python -m vqd_jax.train`` for each stage:
  --vqvae.<field>=<value>       a field of the autoencoder config, e.g. --vqvae.train.num_steps=100
  --diffusion.<field>=<value>   a field of the diffusion config, e.g.
                                --diffusion.train.num_steps=500
Both repeat, and both are checked before anything trains.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from vqd_jax import configs_io, cpu_devices

STAGES = ("vqvae", "diffusion")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.quickstart", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="runs/quickstart", help="Where all stages write.")
  p.add_argument("--long", action="store_true",
                 help="The longer preset (shapes_long): more steps, higher score.")
  p.add_argument("--num-prompts", type=int, default=None,
                 help="Held-out shapes prompts to sample and score (default 300, with --long "
                      "1,000: one standard error of the score is then about 0.025 and 0.01).")
  # --vqvae.<field>=<value> and --diffusion.<field>=<value> are taken out of the arguments first
  # (configs_io.pop_override_flags); the description above explains them.
  return p


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args, overrides = configs_io.parse_args_with_overrides(parser, argv, STAGES + ("config",))
  if overrides.pop("config"):
    parser.error("two stages, two configs: override with --vqvae.<field>=<value> or "
                 "--diffusion.<field>=<value>.")
  num_prompts = args.num_prompts if args.num_prompts is not None else 1000 if args.long else 300
  if num_prompts < 1:
    raise SystemExit(f"--num-prompts must be at least 1, got {num_prompts}.")
  cpu_devices.configure(training=True)  # before jax is imported; training dominates
  preset = "shapes_long" if args.long else "shapes"
  try:  # both stages' overrides are checked before anything trains
    vq_cfg = configs_io.load_config(f"configs/vqvae.py:{preset}", overrides["vqvae"])
    dm_cfg = configs_io.load_config(f"configs/diffusion.py:{preset}", overrides["diffusion"])
  except ValueError as e:
    parser.error(str(e))
  from vqd_jax import diffusion, encode, sample  # pylint: disable=import-outside-toplevel
  from vqd_jax.evaluation import shapes as shapes_eval  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference import VQDiffusionPipeline, load_autoencoder  # pylint: disable=import-outside-toplevel
  from vqd_jax.training import loop  # pylint: disable=import-outside-toplevel

  w = os.path.abspath(args.workdir)
  vq_dir, tok_dir, dm_dir, out_dir = (os.path.join(w, d) for d in
                                      ("vqvae", "tokens", "diffusion", "samples"))
  timings = {}

  t = time.perf_counter()
  loop.train_and_evaluate(vq_cfg, vq_dir)
  timings["vqvae_train_s"] = time.perf_counter() - t

  t = time.perf_counter()
  if not os.path.exists(os.path.join(tok_dir, "DONE")):
    vq = load_autoencoder(vq_dir)
    encode.encode_dataset(vq, dm_cfg.data, tok_dir, num_examples=dm_cfg.data.num_examples)
    open(os.path.join(tok_dir, "DONE"), "w", encoding="utf-8").close()
  timings["encode_s"] = time.perf_counter() - t

  t = time.perf_counter()
  with dm_cfg.unlocked():
    image_size = dm_cfg.data.image_size
    dm_cfg.data.source = "tokens"
    dm_cfg.data.path = tok_dir
    dm_cfg.vqvae_workdir = vq_dir
  loop.train_and_evaluate(dm_cfg, dm_dir)
  timings["diffusion_train_s"] = time.perf_counter() - t

  t = time.perf_counter()
  pipe = VQDiffusionPipeline.from_run(dm_dir)
  settings = diffusion.SamplerConfig(**pipe.sampling_defaults)
  prompts = shapes_eval.heldout_prompts(num_prompts, image_size)
  sample.generate_to_folder(pipe, prompts, out_dir, num_samples=1, settings=settings, seed=0)
  timings["sample_s"] = time.perf_counter() - t

  report = shapes_eval.evaluate_folder(out_dir)
  timings["total_min"] = sum(timings.values()) / 60
  with open(os.path.join(w, "quickstart.json"), "w", encoding="utf-8") as f:
    json.dump({"preset": preset, "timings": timings, "score": report}, f, indent=2)
  print(json.dumps({k: round(v, 1) for k, v in timings.items()}))
  print(f"Samples: {out_dir}/grid.png")
  print(f"shapes score: {report['score']:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
