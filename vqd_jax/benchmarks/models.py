"""VQ-Diffusion, AR (cached and uncached), CTF and CTF-diffusion side by side: speed and FLOPs.

  python -m vqd_jax.bench models --trained runs/quickstart     # the quickstart's trained models
  python -m vqd_jax.bench models --scale S                      # the paper's scale, random weights

Every sampler is a loop of identical network calls, so each method is described by its calls per
image batch (a denoiser step per step, a cached decode step or a full forward per position, CTF's
one fine pass) and each call's FLOPs come from XLA's cost analysis of that call; FLOPs per image
are their sum over the batch's calls divided by the batch size. Guidance doubles every guided
call's rows. ``--trained`` also times each pipeline end to end (prompts to decoded images) at
every batch size and prints the shapes score its quickstart run recorded. ``--scale`` times one
call of each kind and multiplies by the number of calls ("extrapolated": on a CPU the full
uncached AR at 32x32 tokens takes hours); ``--full`` times the whole token sampler instead
where one batch should take under a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# --model stages of the quickstart: (name, run folders, pipeline kind).
TRAINED = (("VQD", ("diffusion",), "vqd"), ("AR", ("ar",), "ar"),
           ("CTF", ("ctf_coarse", "ctf_fine"), "ctf"),
           ("CTF-VQD", ("ctf_coarse_vqd", "ctf_fine"), "ctf"))
SCORE_FILES = {"VQD": "quickstart.json", "AR": "quickstart_ar.json", "CTF": "quickstart_ctf.json",
               "CTF-VQD": "quickstart_ctf_vqd.json"}


@dataclasses.dataclass
class Call:
  """One network call: ``fn(*args)`` jitted, made ``count`` times per batch of ``batch`` images.

  Copies made by :meth:`with_count` share the compiled program and its timing."""
  name: str
  fn: Callable[..., Any]
  args: tuple
  count: int
  batch: int
  _shared: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  def with_count(self, count: int) -> "Call":
    return dataclasses.replace(self, count=count)

  @property
  def compiled(self):
    if "compiled" not in self._shared:
      import jax  # pylint: disable=import-outside-toplevel
      self._shared["compiled"] = jax.jit(self.fn).lower(*self.args).compile()
    return self._shared["compiled"]

  def flops(self) -> float:
    analysis = self.compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis.get("flops", float("nan")))

  def seconds(self, repeats: int = 3) -> float:
    """Median wall time of one call (after a warm-up)."""
    if "seconds" not in self._shared:
      self._shared["seconds"] = median_seconds(lambda: self.compiled(*self.args), repeats)
    return self._shared["seconds"]


def median_seconds(run: Callable[[], Any], repeats: int = 3) -> float:
  """Median wall time of ``run()`` (its results waited for) after one warm-up call."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.block_until_ready(run())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def denoiser_call(model, params, rows: int, text_len: int, text_dim: int, count: int,
                  batch: int) -> Call:
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  x = jnp.zeros((rows, model.num_tokens), jnp.int32)
  t = jnp.full((rows,), model.num_embeds_ada_norm - 1, jnp.int32)
  states = jnp.zeros((rows, text_len, text_dim), jnp.float32)
  fn = lambda p, x, t, s: model.apply({"params": p}, x, t, s)
  return Call("denoiser step", fn, (params, x, t, states), count, batch)


def ar_full_call(model, params, rows: int, text_len: int, text_dim: int, count: int, batch: int,
                 name: str = "full forward") -> Call:
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  x = jnp.zeros((rows, model.num_tokens), jnp.int32)
  states = jnp.zeros((rows, text_len, text_dim), jnp.float32)
  fn = lambda p, x, s: model.apply({"params": p}, x, s)
  return Call(name, fn, (params, x, states), count, batch)


def ar_step_calls(model, params, rows: int, text_len: int, text_dim: int, count: int,
                  batch: int) -> list[Call]:
  """The text's cross-attention keys and values, projected once, and ``count`` key-value-cached
  decode steps (a step's cost does not depend on the position: the cache has its full length
  from the start)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from vqd_jax.autoregressive import decoder_context  # pylint: disable=import-outside-toplevel
  decoder = model.clone(decode=True)
  states = jnp.zeros((rows, text_len, text_dim), jnp.float32)
  shapes = jax.eval_shape(lambda: decoder.init(
      jax.random.key(0), jnp.zeros((rows, model.num_tokens), jnp.int32), states))["cache"]
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  previous = jnp.zeros((rows, 1), jnp.int32)
  context = decoder_context(model, params, states)

  def step(p, cache, previous, s, context):
    return decoder.apply({"params": p, "cache": cache}, previous, s, position=jnp.int32(1),
                         context_kv=context, mutable=["cache"])

  project = lambda p, s: decoder_context(model, p, s)
  return [Call("text projection", project, (params, states), 1, batch),
          Call("cached decode step", step, (params, cache, previous, states, context), count,
               batch)]


def init_params(model, *args, **kwargs):
  import jax  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  return nn.meta.unbox(jax.jit(lambda k: model.init(k, *args, **kwargs)["params"])(
      jax.random.key(0)))


def count_params(params) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def summarise(name: str, calls: Sequence[Call], params: int, extra: dict | None = None,
              measure: bool = True) -> dict[str, Any]:
  """A table row: FLOPs per image and, when ``measure``, extrapolated images/s."""
  batch = calls[0].batch
  flops = sum(c.flops() * c.count for c in calls) / batch
  row = {"method": name, "batch": batch, "params": params,
         "calls": " + ".join(f"{c.count} x {c.name}" for c in calls), "gflops_per_image":
         flops / 1e9}
  if measure:
    seconds = sum(c.seconds() * c.count for c in calls)
    row["images_per_s"] = batch / seconds
    row["timing"] = "extrapolated from one call of each kind"
  row.update(extra or {})
  return row


def print_table(rows: list[dict[str, Any]]) -> None:
  print(f"{'method':<34} {'batch':>5} {'params':>9} {'GFLOP/img':>10} {'img/s':>9} "
        f"{'score':>12}  calls per batch")
  for r in rows:
    score = r.get("shapes_score")
    score_text = "" if score is None else f"{score:.3f}±{r.get('score_se', 0):.3f}"
    ips = r.get("images_per_s")
    print(f"{r['method']:<34} {r['batch']:>5} {r['params'] / 1e6:>8.2f}M "
          f"{r['gflops_per_image']:>10.4g} {'' if ips is None else f'{ips:9.4g}':>9} "
          f"{score_text:>12}  {r['calls']}")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.bench models", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  mode = p.add_mutually_exclusive_group(required=True)
  mode.add_argument("--trained", metavar="WORKDIR",
                    help="A quickstart workdir: every model trained there (diffusion/, ar/, "
                         "ctf_coarse/ + ctf_fine/, ctf_coarse_vqd/), with their scores.")
  mode.add_argument("--scale", choices=("S", "tiny"),
                    help="Random weights at this size: S is the paper's (32x32 tokens, K=2887, "
                         "CTF at --ctf-codes with --clusters coarse labels); tiny checks the code "
                         "path in seconds.")
  p.add_argument("--batch-sizes", default="1,32", help="Comma-separated batch sizes.")
  p.add_argument("--vqd-steps", default="25,50,100", help="VQ-Diffusion step counts.")
  p.add_argument("--ctf-codes", default=None,
                 help="--scale: codebook sizes of the CTF rows (default 4096,16384 for S, twice "
                      "the tiny preset's codes for tiny).")
  p.add_argument("--clusters", type=int, default=512, help="--scale: CTF's coarse labels.")
  p.add_argument("--guidance", type=float, default=2.0,
                 help="Guidance scale of every guided sampler (1 = off: half the rows).")
  p.add_argument("--full", action="store_true",
                 help="--scale: time the whole token sampler instead of extrapolating.")
  p.add_argument("--out", help="Also write the rows as JSON lines to this file.")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from vqd_jax.benchmarks import models_rows  # pylint: disable=import-outside-toplevel
  batches = [int(b) for b in args.batch_sizes.split(",")]
  steps = [int(s) for s in args.vqd_steps.split(",")]
  if args.trained:
    rows = models_rows.trained_rows(args.trained, batches, steps)
  else:
    codes = [int(k) for k in args.ctf_codes.split(",")] if args.ctf_codes else None
    # The rows so far, after each row and before each whole sampler (a stopped run keeps them).
    progress = lambda rows: print(json.dumps({"rows": rows, "partial": True}), flush=True)
    rows = models_rows.scale_rows(args.scale, batches, steps, codes, args.clusters,
                                  args.guidance, args.full, progress)
  print_table(rows)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")
  print(json.dumps({"rows": rows}))
  return 0
