"""``python -m vqd_jax.evaluate prompt-switch``: when does the text decide the image?

eDiff-I observed that early (noisy) steps follow the text and late steps mostly ignore it. Two
measurements check that for a trained shapes run:

* **Switch:** pairs of one-object prompts A and B that differ in colour and shape; the first
  fraction f of the sampling steps are conditioned on A and the rest on B (one jitted sampler,
  ``TokenGenerator.generate_tokens(switch_to=...)``). The shapes scorer decides whether each image
  follows A, B or neither.
* **Contribution:** for x_t drawn from q(x_t | x0) of generated images, the share of each block's
  residual update that comes from cross-attention, ``|attn2| / (|attn1| + |attn2| + |ff|)`` (mean
  L2 norms over positions), per t.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax import diffusion
from vqd_jax.diffusion import sampling as sampling_lib
from vqd_jax.evaluation import shapes as shapes_eval
from vqd_jax.evaluation.paint import fraction_with_error
from vqd_jax.evaluation.paint_run import run_settings

FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def prompt_pairs(num_pairs: int, resolution: int) -> list[tuple[str, str]]:
  """Held-out one-object prompts paired so that colour and shape both differ."""
  singles = [p for p in shapes_eval.heldout_prompts(40 * num_pairs, resolution)
             if len(shapes_eval.parse_caption(p).objects) == 1]
  pairs, pool = [], list(singles)
  while pool and len(pairs) < num_pairs:
    a = shapes_eval.parse_caption(pool.pop(0)).objects[0]
    for i, cand in enumerate(pool):
      b = shapes_eval.parse_caption(cand).objects[0]
      if a.color != b.color and a.shape != b.shape:
        pairs.append((f"a {a.size} {a.color} {a.shape}", pool.pop(i)))
        break
  if len(pairs) < num_pairs:
    raise ValueError(f"Only {len(pairs)} prompt pairs found; ask for fewer.")
  return pairs


def switch_below(fraction: float, times: np.ndarray, num_timesteps: int) -> int:
  """The ``switch_below`` that conditions the first ``fraction`` of the steps ``times`` on A."""
  k = int(round(fraction * len(times)))
  if k == 0:
    return num_timesteps  # every step on B
  return 0 if k == len(times) else int(times[k]) + 1


def _program(pipe, settings):
  @jax.jit
  def run(params, ids_a, mask_a, ids_b, mask_b, key, below):
    cond_a = pipe.conditioner.encode(params, ids_a, mask_a)
    cond_b = pipe.conditioner.encode(params, ids_b, mask_b)
    null = None
    if diffusion.uses_guidance(settings.guidance_scale):
      null = pipe.conditioner.null(params, ids_a.shape[0])
    tokens = pipe.generator.generate_tokens(params["transformer"], cond_a, key, settings,
                                            null=null, switch_to=cond_b, switch_below=below)
    return tokens, jnp.round(pipe.decode_tokens(params, tokens) * 255).astype(jnp.uint8)
  return run


def cross_attention_share(pipe, tokens: jax.Array, prompts: list[str], key: jax.Array,
                          ts: list[int]) -> np.ndarray:
  """``[len(ts), num_layers]``: cross-attention's share of each block's residual update."""
  params = pipe.params
  ids, mask = pipe.tokenize(prompts)
  cond = pipe.conditioner.encode(params, jnp.asarray(ids), jnp.asarray(mask))
  wanted = ("attn1", "attn2", "ff")

  @jax.jit
  def share(t, key):
    x_t = pipe.generator.process.q_sample(key, tokens, jnp.full(tokens.shape[:1], t))
    _, state = pipe.transformer.apply(
        {"params": params["transformer"]}, x_t, jnp.full(tokens.shape[:1], t), cond.states,
        cond.mask, global_cond=cond.pooled,
        capture_intermediates=lambda module, _: module.name in wanted, mutable=["intermediates"])
    blocks = state["intermediates"]
    out = []
    for i in range(pipe.transformer.num_layers):
      block = blocks[f"transformer_blocks_{i}"]
      norm = {n: jnp.linalg.norm(block[n]["__call__"][0], axis=-1).mean() for n in wanted}
      out.append(norm["attn2"] / sum(norm.values()))
    return jnp.stack(out)

  return np.stack([np.asarray(share(t, jax.random.fold_in(key, t))) for t in ts])


def run(args) -> int:
  """The subcommand (arguments from ``vqd_jax.evaluate.build_parser``)."""
  from vqd_jax.inference import VQDiffusionPipeline  # pylint: disable=import-outside-toplevel
  pipe = VQDiffusionPipeline.from_run(args.workdir)
  settings = run_settings(pipe)
  try:
    pairs = prompt_pairs(args.num_pairs, pipe.image_size[0])
  except ValueError as e:
    raise SystemExit(f"evaluate prompt-switch: {e} (--num-pairs)") from e
  times = sampling_lib.evaluation_times(pipe.num_timesteps - 1, settings.num_steps)
  ids_a, mask_a = (jnp.asarray(a) for a in pipe.tokenize([a for a, _ in pairs]))
  ids_b, mask_b = (jnp.asarray(a) for a in pipe.tokenize([b for _, b in pairs]))
  program = _program(pipe, settings)
  key = jax.random.key(args.seed)
  report: dict[str, Any] = {"workdir": args.workdir, "checkpoint_step": pipe.checkpoint_step,
                            "num_pairs": len(pairs), "settings": pipe.sampling_defaults,
                            "switch": {}}
  last_tokens = None
  for f in FRACTIONS:
    tokens, images = program(pipe.params, ids_a, mask_a, ids_b, mask_b, key,
                             jnp.int32(switch_below(f, times, pipe.num_timesteps)))
    follows_a = [shapes_eval.score(im, a).correct for im, (a, _) in zip(np.asarray(images), pairs)]
    follows_b = [shapes_eval.score(im, b).correct for im, (_, b) in zip(np.asarray(images), pairs)]
    neither = [not (x or y) for x, y in zip(follows_a, follows_b)]
    row = {name: fraction_with_error(v) for name, v in
           (("A", follows_a), ("B", follows_b), ("neither", neither))}
    report["switch"][f"{f:g}"] = row
    print(f"first {f:4.0%} of steps on A: follows A {row['A'][0]:.3f} ± {row['A'][1]:.3f}, "
          f"B {row['B'][0]:.3f} ± {row['B'][1]:.3f}, neither {row['neither'][0]:.3f}")
    if f == 1.0:
      last_tokens = tokens
  last_t = pipe.num_timesteps - 1
  ts = list(range(0, last_t, max(1, pipe.num_timesteps // 10))) + [last_t]
  shares = cross_attention_share(pipe, last_tokens, [a for a, _ in pairs], key, ts)
  report["cross_attention_share"] = {str(t): s.tolist() for t, s in zip(ts, shares)}
  for t, s in zip(ts, shares):
    print(f"t={t:3d}: cross-attention share per block " + " ".join(f"{v:.3f}" for v in s))
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "prompt_switch.json")
  with open(path, "w", encoding="utf-8") as fh:
    json.dump(report, fh, indent=2)
  print(f"report: {path}")
  return 0
