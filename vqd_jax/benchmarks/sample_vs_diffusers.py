"""Full text-to-image sampling speed: vqd_jax's pipeline against diffusers' VQDiffusionPipeline.

  python -m vqd_jax.bench sample [--steps 10 --batch-size 1 ...]

One random-weight VQ-Diffusion checkpoint (default: the VQ-Diffusion-S transformer of
``vqd_jax.transformer.presets``, K = 4096 codes on a 32x32 token grid, CLIP B/32-sized text encoder
of width 512, ITHQ's VQ decoder to 256x256) is saved in the diffusers layout; diffusers runs it from
the folder in PyTorch and vqd_jax loads the same folder. Both generate ``--batch-size`` images with the
same step count, guidance and truncation, timing the whole pipeline: prompt encoding, every step
and VQ decoding. vqd_jax's first call compiles (reported separately); timings are the best of
``--repeats`` runs after one warm-up, interleaved so both see the same machine load; the process
CPU time is reported too (a steadier figure on a shared machine). Prints images/s of each, the
ratio and one JSON line.

With fewer steps than T = 100 both run that many network calls (diffusers at t = n-1..0, vqd_jax on
the exact skip posterior), so the work per step is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence

from vqd_jax.transformer.presets import PRESETS as TRANSFORMER_PRESETS

_S = TRANSFORMER_PRESETS["S"]
PRESETS = {
    # The S transformer with ITHQ's VQ (4096 codes) and CLIP B/32.
    "S": dict(num_layers=_S["num_layers"], num_heads=_S["num_heads"], head_dim=_S["head_dim"],
              num_codes=4096, token_side=_S["height"], text_width=_S["cross_attention_dim"],
              text_layers=12, text_heads=8, vq_channels="64,128,256,512", vq_layers_per_block=2),
    # A quick sanity run: same structure, a few seconds per pipeline.
    "small": dict(num_layers=4, num_heads=4, head_dim=16, num_codes=1024, token_side=16,
                  text_width=128, text_layers=2, text_heads=4, vq_channels="32,64,128",
                  vq_layers_per_block=1),
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m vqd_jax.bench sample", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="S",
                      help="Model size; the size flags below override single fields.")
  for name, kind, what in (
      ("num-layers", int, "transformer blocks"), ("num-heads", int, "attention heads"),
      ("head-dim", int, "width per head"), ("num-codes", int, "K, VQ codes"),
      ("token-side", int, "token grid side (32 -> 1024 tokens)"),
      ("text-width", int, "CLIP width"), ("text-layers", int, "CLIP layers"),
      ("text-heads", int, "CLIP heads"),
      ("vq-channels", str, "VQ block_out_channels, comma-separated (ITHQ: 64,128,256,512)"),
      ("vq-layers-per-block", int, "VQ resnets per block")):
    parser.add_argument(f"--{name}", type=kind, default=None, help=f"{what} (default: preset).")
  parser.add_argument("--steps", type=int, default=10, help="Denoising steps (network calls).")
  parser.add_argument("--batch-size", type=int, default=1, help="Images per pipeline call.")
  parser.add_argument("--guidance", type=float, default=5.0,
                      help="Classifier-free guidance scale (> 1 doubles the transformer batch).")
  parser.add_argument("--truncation", type=float, default=1.0, help="Truncation rate r.")
  parser.add_argument("--repeats", type=int, default=1, help="Timed runs after the warm-up.")
  parser.add_argument("--threads", type=int, default=None,
                      help="torch intra-op threads (default: torch's own choice, all cores).")
  parser.add_argument("--torch-device", default=None,
                      help="Where diffusers runs: cpu or cuda (default: cuda when torch sees a GPU).")
  parser.add_argument("--skip-diffusers", action="store_true",
                      help="Time vqd_jax only (e.g. on accelerators without a torch build).")
  parser.add_argument("--folder", default=None,
                      help="Where to write the random checkpoint (default: a temporary folder).")
  return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = build_parser()
  args = parser.parse_args(argv)
  for key, value in PRESETS[args.preset].items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  return args


def _timed(fn) -> tuple[float, float]:
  """``(wall seconds, CPU seconds of this process)`` of one call."""
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse(argv)
  # pylint: disable=import-outside-toplevel
  import jax
  import torch
  from vqd_jax.benchmarks.random_diffusers import RandomPipelineSizes, save_random_pipeline
  from vqd_jax.inference import VQDiffusionPipeline
  # pylint: enable=import-outside-toplevel

  if args.threads:
    torch.set_num_threads(args.threads)
  sizes = RandomPipelineSizes(
      num_codes=args.num_codes, token_side=args.token_side, num_layers=args.num_layers,
      num_heads=args.num_heads, head_dim=args.head_dim, text_width=args.text_width,
      text_layers=args.text_layers, text_heads=args.text_heads,
      vq_channels=tuple(int(c) for c in args.vq_channels.split(",")),
      vq_layers_per_block=args.vq_layers_per_block)
  folder = args.folder or tempfile.mkdtemp(prefix="vqd_bench_pipeline_")
  theirs = save_random_pipeline(folder, sizes)
  torch_device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
  theirs = theirs.to(torch_device)
  ours = VQDiffusionPipeline.from_pretrained(folder)
  prompts = [["a photo of a cat", "a red dog on the beach", "a small blue square",
              "the sky"][i % 4] for i in range(args.batch_size)]
  kwargs = dict(num_inference_steps=args.steps, guidance_scale=args.guidance,
                truncation_rate=args.truncation)
  device = jax.devices()[0]
  print(f"model: {args.num_layers} layers x {args.num_heads * args.head_dim} width "
        f"({args.num_heads} heads x {args.head_dim}), K={args.num_codes}, "
        f"{args.token_side}x{args.token_side} tokens, CLIP {args.text_layers}x{args.text_width}, "
        f"images {sizes.image_side}x{sizes.image_side}; batch {args.batch_size}, {args.steps} "
        f"steps, guidance {args.guidance}, truncation {args.truncation}; jax on {jax.device_count()} "
        f"{device.platform} device(s), "
        f"torch on {torch_device}, torch threads {torch.get_num_threads()}, {os.cpu_count()} cpus")

  start = time.perf_counter()
  ours(prompts, seed=0, **kwargs)
  first = time.perf_counter() - start
  run_ours = lambda: ours(prompts, seed=1, **kwargs)
  generator = torch.Generator(device=torch_device).manual_seed(0)

  def run_diffusers():
    with torch.no_grad():
      theirs(prompts, generator=generator, output_type="np", **kwargs)

  if not args.skip_diffusers:
    run_diffusers()  # warm-up (allocator, first-call overheads)
  # Interleaved, so both see the same machine load; the best run of each is reported.
  times = {"vqd_jax": [], "diffusers": []}
  for _ in range(args.repeats):
    times["vqd_jax"].append(_timed(run_ours))
    if not args.skip_diffusers:
      times["diffusers"].append(_timed(run_diffusers))
  result = {"vqd_jax_compile_s": max(first - min(w for w, _ in times["vqd_jax"]), 0.0)}
  for name, runs in times.items():
    if not runs:
      continue
    wall, cpu = min(w for w, _ in runs), min(c for _, c in runs)
    result.update({f"{name}_s": wall, f"{name}_cpu_s": cpu,
                   f"{name}_images_per_s": args.batch_size / wall})
    print(f"{name:<9}: {wall:8.2f} s/call  {args.batch_size / wall:.4f} images/s  "
          f"(process CPU {cpu:.1f} s)")
  print(f"vqd_jax compile: {result['vqd_jax_compile_s']:.1f} s (not in the timings)")
  if times["diffusers"]:
    result["speedup"] = result["diffusers_s"] / result["vqd_jax_s"]
    result["cpu_time_ratio"] = result["diffusers_cpu_s"] / result["vqd_jax_cpu_s"]
    print(f"vqd_jax is {result['speedup']:.2f}x faster than diffusers (CPU-time ratio "
          f"{result['cpu_time_ratio']:.2f}x)")
  config = {k: getattr(args, k) for k in (
      "preset", "num_layers", "num_heads", "head_dim", "num_codes", "token_side", "text_width",
      "text_layers", "vq_channels", "steps", "batch_size", "guidance", "truncation", "repeats")}
  print(json.dumps({"benchmark": "sample_vs_diffusers", "device": device.device_kind,
                    "torch_device": torch_device,
                    "torch_threads": torch.get_num_threads(), "config": config, **result}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
