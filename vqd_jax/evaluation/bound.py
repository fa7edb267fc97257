"""``python -m vqd_jax.evaluate bound``: a run's variational bound on held-out data, per timestep.

For held-out examples x0 (the run's own evaluation images, encoded by its autoencoder) and their
captions, every evaluated t draws x_t ~ q(x_t | x0) once per example and measures the term of the
bound the training loss is built from (``vqd_jax.diffusion.diffusion_loss``, importance weights
and auxiliary term left out):

* t > 0: L_t = KL(q(x_{t-1} | x_t, x0) ‖ p_θ(x_{t-1} | x_t)), summed over tokens;
* t = 0: the decoder's −log p_θ(x0 | x_1).

The prior term L_T = KL(q(x_T | x0) ‖ p(x_T)) has no parameters; it is reported beside them.
Everything is in nats per token. The negative log-likelihood bound is L_T + Σ_t L_t; with a
``t_stride`` above 1 each evaluated t stands for ``t_stride`` steps of the sum. An ensemble of
experts is evaluated like sampling runs it: each t by the expert that owns it. Ranges of t (the
experts' intervals, or boundaries given) are summarised by the mean L_t over their timesteps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax import diffusion


def prior_per_token(process: diffusion.MaskAndReplace, x0: jax.Array) -> jax.Array:
  """``[B]`` L_T / N: KL(q(x_T | x0) ‖ p(x_T)) per token for codes ``x0 [B, N]``.

  p(x_T) is the chain's end state whatever x0 was: [MASK] with probability C̄_T, each real code
  with (1 − C̄_T) / K (x0's own code keeps Ā_T more under q).
  """
  k, last = process.num_classes, process.num_timesteps - 1
  log_x0 = jnp.concatenate([diffusion.index_to_log_onehot(x0, k),
                            jnp.full(x0.shape + (1,), -jnp.inf)], axis=-1)
  log_q = process.q_pred(log_x0, last)                                    # [B, N, K+1]
  log_mask = process.log_cum_mask[last + 1]
  log_code = jnp.log1p(-jnp.exp(log_mask)) - np.log(k)
  log_p = jnp.concatenate([jnp.full((k,), log_code), log_mask[None]])
  return jnp.mean(diffusion.multinomial_kl(log_q, log_p), axis=-1)


def _term_program(pipe):
  """Jitted ``(params, x0, ids, mask, t, keys) -> [B]`` L_t / N of the run's denoiser, x_t of
  row i drawn with ``keys[i]``."""
  process = pipe.generator.process

  @jax.jit
  def term(params, x0, ids, mask, t, keys):
    cond = pipe.conditioner.encode(params, ids, mask)
    t = jnp.full(x0.shape[:1], t, jnp.int32)
    x_t = jax.vmap(lambda k, x, s: process.q_sample(k, x[None], s[None])[0])(keys, x0, t)
    log_x0 = pipe.generator.denoise(params["transformer"], x_t, t, cond)
    _, terms = diffusion.diffusion_loss(process, log_x0, x0, x_t, t, jnp.ones_like(t, jnp.float32),
                                        aux_weight=0.0)
    return terms.vb / x0.shape[1]

  return term


def example_keys(seed: int, t: int, indices: Sequence[int]) -> jax.Array:
  """The keys that draw x_t for examples ``indices`` at ``t``: ``fold_in(fold_in(key(seed), t),
  i)``, so a result never depends on the batch size and runs compared with one seed see the same
  x_t wherever they share the autoencoder."""
  base = jax.random.fold_in(jax.random.key(seed), int(t))
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.int32))


def bound_terms(pipe, images: np.ndarray, captions: Sequence[str], timesteps: Sequence[int],
                seed: int = 0, batch_size: int = 100) -> tuple[np.ndarray, np.ndarray]:
  """``(L_t / N [len(timesteps), M], L_T / N [M])`` for ``M`` uint8 images ``[M, H, W, 3]``
  (x_t of example i at t drawn with ``example_keys(seed, t, [i])``)."""
  if len(images) != len(captions) or not len(images):
    raise ValueError(f"Need as many captions as images (got {len(captions)} and {len(images)}).")
  term = _term_program(pipe)
  prior_program = jax.jit(prior_per_token)
  terms = np.zeros((len(timesteps), len(images)), np.float64)
  prior = np.zeros(len(images), np.float64)
  for start in range(0, len(images), batch_size):
    stop = min(start + batch_size, len(images))
    x0 = pipe.encode_image(images[start:stop])
    ids, mask = (jnp.asarray(a) for a in pipe.tokenize(list(captions[start:stop])))
    prior[start:stop] = np.asarray(prior_program(pipe.generator.process, x0))
    for row, t in enumerate(timesteps):
      keys = example_keys(seed, t, range(start, stop))
      terms[row, start:stop] = np.asarray(term(pipe.params, x0, ids, mask, jnp.int32(t), keys))
  return terms, prior


def summarize(terms: np.ndarray, prior: np.ndarray, timesteps: Sequence[int], num_timesteps: int,
              boundaries: Sequence[int]) -> dict[str, Any]:
  """Per-t and per-range means with standard errors, and the whole bound, in nats per token.

  A range's value is the mean over its evaluated timesteps of the mean L_t; its standard error
  treats examples as the independent draws (each example's mean over the range's t).
  """
  timesteps = [int(t) for t in timesteps]
  stride = num_timesteps / len(timesteps)
  per_example_total = prior + stride * terms.sum(axis=0)
  starts = [0, *boundaries]
  ends = [*boundaries, num_timesteps]
  ranges = {}
  for lo, hi in zip(starts, ends):
    rows = [i for i, t in enumerate(timesteps) if lo <= t < hi]
    if rows:
      per_example = terms[rows].mean(axis=0)
      ranges[f"{lo}-{hi - 1}"] = _mean_se(per_example)
  return {
      "num_examples": int(terms.shape[1]),
      "timesteps": timesteps,
      "per_t": {str(t): _mean_se(terms[i]) for i, t in enumerate(timesteps)},
      "ranges": ranges,
      "prior": _mean_se(prior),
      "bound": _mean_se(per_example_total),
  }


def _mean_se(values: np.ndarray) -> list[float]:
  values = np.asarray(values, np.float64)
  se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
  return [float(values.mean()), float(se)]


def range_boundaries(pipe, given: str | None) -> list[int]:
  """The t-range boundaries: ``given`` ("25,75"), else the ensemble's own, else T/4 and 3T/4 (the
  uniform tree of ``configs/diffusion.py:shapes_experts``)."""
  t_count = pipe.num_timesteps
  if given:
    try:
      bounds = [int(b) for b in given.split(",") if b.strip()]
      diffusion.ExpertIntervals(tuple(bounds), t_count)
    except ValueError as e:
      raise ValueError(f"--ranges {given!r}: {e}") from e
    return bounds
  params = pipe.params["transformer"]
  if isinstance(params, diffusion.ExpertParams):
    return list(params.intervals.boundaries)
  return list(diffusion.ExpertIntervals.tree(np.ones(t_count)).boundaries)


def run(args) -> int:
  """The subcommand (arguments from ``vqd_jax.evaluate.build_parser``)."""
  from vqd_jax.evaluation import heldout  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference import VQDiffusionPipeline  # pylint: disable=import-outside-toplevel
  for name, value, low in (("--num-examples", args.num_examples, 2),
                           ("--t-stride", args.t_stride, 1), ("--batch-size", args.batch_size, 1)):
    if value < low:
      raise SystemExit(f"evaluate bound: {name} must be >= {low}, got {value}.")
  try:
    pipe = VQDiffusionPipeline.from_run(args.workdir)
    bounds = range_boundaries(pipe, args.ranges)
    examples = heldout.run_examples(args.workdir, args.num_examples)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"evaluate bound: {e}") from e
  timesteps = list(range(0, pipe.num_timesteps, args.t_stride))
  terms, prior = bound_terms(pipe, examples.images, examples.captions, timesteps, args.seed,
                             args.batch_size)
  report = {"workdir": args.workdir, "checkpoint_step": pipe.checkpoint_step,
            "examples": examples.rule, "t_stride": args.t_stride, "seed": args.seed,
            **summarize(terms, prior, timesteps, pipe.num_timesteps, bounds)}
  for name, (mean, se) in report["ranges"].items():
    print(f"t {name}: mean L_t {mean:.5f} ± {se:.5f} nats/token")
  print(f"prior L_T {report['prior'][0]:.5f} nats/token")
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "bound.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(f"report: {path}")
  print(f"bound {report['bound'][0]:.4f} ± {report['bound'][1]:.4f} nats/token "
        f"({report['num_examples']} examples)")
  return 0
