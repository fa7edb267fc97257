"""How much the sampler's loop costs on top of the network, per step.

Two jitted programs run the same number of steps on the same dummy denoiser:

* ``denoiser only``: a ``lax.scan`` that calls the denoiser and feeds a cheap function of its output
  back as the next input (so nothing is hoisted out of the loop);
* ``sampler``: ``vqd_jax.diffusion.sample`` (posterior or purity sampler, with the chosen guidance
  and truncation).

The difference per step is what the diffusion math (posterior, Gumbel sampling, truncation,
guidance, purity selection) adds. Two dummy denoisers bracket real networks: ``matmul`` embeds the
tokens and projects to K logits (about 2·B·N·width·K FLOPs, like a transformer's output head) and
``null`` returns a fixed distribution (near zero cost, so the loop's own cost is exposed).
Timings are the best of ``--repeats`` runs after compilation. With ``--experts E`` (default 3) the
same sampler also runs an ensemble of E expert denoisers of the same size, routed by t inside the
scan as ``TokenGenerator`` does, and prints both per-step times and their ratio (one expert runs
per step, so it should stay near 1). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.diffusion import MaskAndReplace
from vqd_jax.diffusion import SCHEDULES
from vqd_jax.diffusion import sample
from vqd_jax.diffusion import experts as experts_lib
from vqd_jax.diffusion.guidance import uses_guidance

DENOISERS = ("matmul", "null")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m vqd_jax.bench sampler",
      description="Time the jitted VQ-Diffusion sampler against its denoiser alone "
                  "(steps/s and loop overhead per step).")
  parser.add_argument("--num-classes", type=int, default=4096,
                      help="K, number of real codes (ITHQ: 4096; COCO/CUB: 2887).")
  parser.add_argument("--num-tokens", type=int, default=1024, help="N, tokens per image (32x32).")
  parser.add_argument("--batch-size", type=int, default=2, help="B, images per call.")
  parser.add_argument("--num-steps", type=int, default=25,
                      help="network calls per sample (<= --num-timesteps for the posterior "
                           "sampler).")
  parser.add_argument("--num-timesteps", type=int, default=100, help="T of the process.")
  parser.add_argument("--schedule", choices=SCHEDULES, default="released",
                      help="noise schedule of the process.")
  parser.add_argument("--width", type=int, default=512,
                      help="hidden width of the matmul denoiser (its cost scales with it).")
  parser.add_argument("--denoisers", default=",".join(DENOISERS),
                      help=f"comma-separated dummy denoisers to time, from {DENOISERS}.")
  parser.add_argument("--guidance-scale", type=float, default=1.0,
                      help="classifier-free guidance scale; != 1 doubles the denoiser batch.")
  parser.add_argument("--truncation-rate", type=float, default=1.0,
                      help="keep the top-r probability mass (1 = off).")
  parser.add_argument("--purity-weight", type=float, default=None,
                      help="use the purity-prior sampler with this weight (default: posterior "
                           "sampler).")
  parser.add_argument("--experts", type=int, default=3,
                      help="also time an ensemble of this many expert denoisers (each the size "
                           "of the single one, routed by t inside the sampler) against one "
                           "denoiser; 0 skips it.")
  parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported.")
  parser.add_argument("--seed", type=int, default=0, help="PRNG seed.")
  parser.add_argument("--prng-impl", default="threefry2x32",
                      choices=("threefry2x32", "rbg", "unsafe_rbg"),
                      help="jax.random key implementation; the sampler draws B·N·(K+1) Gumbel "
                           "variables per step, which dominates the loop on CPUs with threefry.")
  return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = build_parser()
  args = parser.parse_args(argv)
  unknown = set(args.denoisers.split(",")) - set(DENOISERS)
  if unknown:
    parser.error(f"unknown denoisers {sorted(unknown)}; choose from {DENOISERS}.")
  return args


def _make_denoiser(kind: str, num_classes: int, num_timesteps: int, width: int, key: jax.Array):
  """``(params, denoise(params, x [B, N], t [B]) -> [B, N, K] log-probs)`` for a dummy network."""
  if kind == "null":
    params = {"log_p": jax.nn.log_softmax(jax.random.normal(key, (num_classes,)))}

    def denoise(params, x_t, t):
      # Depends on x_t (cheaply) so the compiler cannot hoist it out of the loop.
      is_mask = (x_t == num_classes)[..., None].astype(jnp.float32)
      return params["log_p"] + 1e-3 * is_mask + 0.0 * t[:, None, None]
  else:
    k_tok, k_time, k_out = jax.random.split(key, 3)
    params = {
        "tokens": jax.random.normal(k_tok, (num_classes + 1, width)) * 0.02,
        "time": jax.random.normal(k_time, (num_timesteps, width)) * 0.02,
        "out": jax.random.normal(k_out, (width, num_classes)) / np.sqrt(width),
    }

    def denoise(params, x_t, t):
      hidden = params["tokens"][x_t] + params["time"][t][:, None, :]
      return jax.nn.log_softmax(hidden @ params["out"], axis=-1)
  return params, denoise


def _best_time(fn: Callable[[], jax.Array], repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def _time_denoiser_only(denoise, params, rows: int, args, key) -> tuple[float, float]:
  """(compile seconds, best run seconds) of ``num_steps`` denoiser calls in one scan."""
  times = jnp.asarray(np.linspace(args.num_timesteps - 1, 0, args.num_steps).round(), jnp.int32)

  @jax.jit
  def loop(params, key):
    x = jax.random.randint(key, (rows, args.num_tokens), 0, args.num_classes + 1)

    def step(x, t):
      out = denoise(params, x, jnp.full((rows,), t, jnp.int32))
      # Read the whole output (a max over K, cheaper than any sampler) so none of it is dead code.
      return jnp.where(jnp.max(out, axis=-1) > -1e9, x, args.num_classes), None
    return jax.lax.scan(step, x, times)[0]

  start = time.perf_counter()
  compiled = loop.lower(params, key).compile()
  compile_s = time.perf_counter() - start
  return compile_s, _best_time(lambda: compiled(params, key), args.repeats)


def _time_sampler(denoise, params, process, args, key) -> tuple[float, float]:
  """(compile seconds, best run seconds) of the full sampler."""
  @jax.jit
  def run(params, key):
    return sample(functools.partial(denoise, params), key, process, batch_size=args.batch_size,
                  num_tokens=args.num_tokens, num_steps=args.num_steps,
                  truncation_rate=args.truncation_rate, guidance_scale=args.guidance_scale,
                  purity_weight=args.purity_weight)

  start = time.perf_counter()
  compiled = run.lower(params, key).compile()
  compile_s = time.perf_counter() - start
  return compile_s, _best_time(lambda: compiled(params, key), args.repeats)


def _ensemble(denoise, params, num_experts: int, num_timesteps: int):
  """``(ExpertParams, denoise)`` for ``num_experts`` perturbed copies of ``params``, routed like
  ``TokenGenerator``: each call runs the expert owning its (shared) t."""
  bounds = np.linspace(0, num_timesteps, num_experts + 1).round().astype(int)[1:-1]
  stacked = jax.tree.map(lambda p: p * (1.0 + 0.01 * jnp.arange(num_experts).reshape(
      (num_experts,) + (1,) * (p.ndim - 1))), experts_lib.stack_experts(params, num_experts))
  ensemble = experts_lib.ExpertParams(stacked, experts_lib.ExpertIntervals(tuple(bounds),
                                                                           num_timesteps))

  def routed(ens, x_t, t):
    return denoise(ens.select(ens.intervals.expert_of(t[0])), x_t, t)
  return ensemble, routed


def _compare_ensemble(kind, denoise, params, process, args, key) -> dict[str, float]:
  """Sampler ms/step of one denoiser and of an ensemble of ``args.experts``, same program."""
  ensemble, routed = _ensemble(denoise, params, args.experts, args.num_timesteps)
  _, single_s = _time_sampler(denoise, params, process, args, key)
  _, ensemble_s = _time_sampler(routed, ensemble, process, args, key)
  single, ens = 1e3 * single_s / args.num_steps, 1e3 * ensemble_s / args.num_steps
  print(f"{kind:<8} single {single:.3f} ms/step, {args.experts} experts {ens:.3f} ms/step, "
        f"ratio {ens / single:.3f}")
  return {"denoiser": kind, "experts": args.experts, "single_ms_per_step": single,
          "ensemble_ms_per_step": ens, "ratio": ens / single}


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the benchmark; returns a process exit code."""
  args = _parse(argv)
  process = MaskAndReplace(args.num_classes, args.num_timesteps, args.schedule)
  rows = 2 * args.batch_size if uses_guidance(args.guidance_scale) else args.batch_size
  key = jax.random.key(args.seed, impl=args.prng_impl)
  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}); K={args.num_classes} "
        f"N={args.num_tokens} B={args.batch_size} (denoiser rows {rows}) steps={args.num_steps} "
        f"guidance={args.guidance_scale} truncation={args.truncation_rate} "
        f"purity={args.purity_weight} prng={args.prng_impl}")
  header = (f"{'denoiser':<8} {'denoiser-only ms/step':>22} {'sampler ms/step':>16} "
            f"{'overhead ms/step':>17} {'denoiser steps/s':>17} {'sampler steps/s':>16}")
  print(header)
  results = []
  for kind in args.denoisers.split(","):
    params, denoise = _make_denoiser(kind, args.num_classes, args.num_timesteps, args.width, key)
    compile_only, only_s = _time_denoiser_only(denoise, params, rows, args, key)
    compile_sampler, sampler_s = _time_sampler(denoise, params, process, args, key)
    per_only, per_sampler = only_s / args.num_steps, sampler_s / args.num_steps
    result = {
        "denoiser": kind, "denoiser_ms_per_step": 1e3 * per_only,
        "sampler_ms_per_step": 1e3 * per_sampler,
        "overhead_ms_per_step": 1e3 * (per_sampler - per_only),
        "denoiser_steps_per_s": 1.0 / per_only, "sampler_steps_per_s": 1.0 / per_sampler,
        "compile_s": {"denoiser_only": compile_only, "sampler": compile_sampler},
    }
    results.append(result)
    print(f"{kind:<8} {result['denoiser_ms_per_step']:>22.3f} {result['sampler_ms_per_step']:>16.3f} "
          f"{result['overhead_ms_per_step']:>17.3f} {result['denoiser_steps_per_s']:>17.2f} "
          f"{result['sampler_steps_per_s']:>16.2f}")
  ensembles = []
  if args.experts:
    print(f"expert ensemble vs one denoiser of the same size (sampler, {args.num_steps} steps):")
    for kind in args.denoisers.split(","):
      params, denoise = _make_denoiser(kind, args.num_classes, args.num_timesteps, args.width, key)
      ensembles.append(_compare_ensemble(kind, denoise, params, process, args, key))
  config = {name: getattr(args, name) for name in (
      "num_classes", "num_tokens", "batch_size", "num_steps", "num_timesteps", "schedule", "width",
      "guidance_scale", "truncation_rate", "purity_weight", "repeats", "prng_impl", "experts")}
  print(json.dumps({"benchmark": "sampler", "device": device.device_kind, "config": config,
                    "results": results, "experts": ensembles}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
