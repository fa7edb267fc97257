"""The rows of ``python -m vqd_jax.bench models``: trained quickstart models, or random weights."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vqd_jax.benchmarks.models import (SCORE_FILES, TRAINED, ar_full_call, ar_step_calls,
                                       count_params, denoiser_call, init_params, median_seconds,
                                       summarise)


def _rows(guided: bool, batch: int) -> int:
  return 2 * batch if guided else batch


# -- the paper's scale, random weights -----------------------------------------------------------


def _sizes(scale: str) -> dict[str, Any]:
  from vqd_jax.transformer.presets import PRESETS  # pylint: disable=import-outside-toplevel
  p = PRESETS[scale]
  return dict(height=p["height"], width=p["width"], num_layers=p["num_layers"],
              num_heads=p["num_heads"], head_dim=p["head_dim"],
              cross_attention_dim=p["cross_attention_dim"]), p["num_classes"]


def scale_rows(scale: str, batches: Sequence[int], steps: Sequence[int],
               ctf_codes: Sequence[int] | None, clusters: int, guidance: float,
               full: bool, progress: Callable[[list], None] | None = None
               ) -> list[dict[str, Any]]:
  """VQD, AR (cached, uncached), CTF and CTF-VQD of one size with random weights (CTF at
  ``ctf_codes``, by default 4096 and 16384 codes for S, twice the preset's codes for tiny).

  ``progress(rows)`` (when given) sees the rows as they stand after each new row and, with
  ``full``, before each whole sampler is timed, so a run stopped early keeps its figures."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from vqd_jax.autoregressive import ARTransformer  # pylint: disable=import-outside-toplevel
  from vqd_jax.transformer import Text2ImageTransformer  # pylint: disable=import-outside-toplevel
  sizes, codes = _sizes(scale)
  if scale == "tiny":  # seconds: the code path, not the figures
    ctf_codes, clusters = ctf_codes or [2 * codes], min(clusters, 4)
  ctf_codes = ctf_codes or [4096, 16384]
  text_len, text_dim = (77 if scale == "S" else 8), sizes["cross_attention_dim"]
  n = sizes["height"] * sizes["width"]
  states = jnp.zeros((1, text_len, text_dim), jnp.float32)
  tokens = jnp.zeros((1, n), jnp.int32)

  def denoiser(k):
    model = Text2ImageTransformer(num_classes=k, num_embeds_ada_norm=100, **sizes)
    return model, init_params(model, tokens, jnp.zeros((1,), jnp.int32), states)

  def ar(k, **kw):
    model = ARTransformer(num_classes=k, **sizes, **kw)
    return model, init_params(model, tokens, states)

  guided = guidance != 1.0
  vqd, ar_base = denoiser(codes), ar(codes)
  # CTF's coarse AR and diffusion stages; per codebook size the AR baseline and the fine predictor.
  coarse, coarse_vqd = ar(clusters), denoiser(clusters)
  per_k = {k: (ar(k), ar(k, causal=False, input_classes=clusters)) for k in ctf_codes}
  samplers = _whole_samplers(vqd, ar_base, guidance)
  rows, timed = [], []  # timed: (row, the sampler that --full runs for it)

  def add(row):
    rows.append(row)
    if progress:
      progress(rows)

  for b in batches:
    r = _rows(guided, b)
    kw = dict(text_len=text_len, text_dim=text_dim, batch=b)
    vqd_step = denoiser_call(*vqd, r, count=1, **kw)  # one program for every step count
    coarse_steps = ar_step_calls(*coarse, r, count=n, **kw)
    coarse_denoise = denoiser_call(*coarse_vqd, r, count=steps[0], **kw)
    for s in steps:
      add(summarise(f"VQD {s} steps K={codes}", [vqd_step.with_count(s)],
                    count_params(vqd[1])))
      timed.append((rows[-1], samplers["vqd"](s)))
    for cached in (True, False):
      calls = (ar_step_calls(*ar_base, r, count=n, **kw) if cached
               else [ar_full_call(*ar_base, r, count=n, **kw)])
      add(summarise(f"AR {'cached' if cached else 'uncached'} K={codes}", calls,
                    count_params(ar_base[1])))
      timed.append((rows[-1], samplers["ar"](cached)))
    for k, (big, fine) in per_k.items():
      fine_call = ar_full_call(*fine, b, count=1, name="fine pass", **kw)
      add(summarise(f"AR cached K={k}", ar_step_calls(*big, r, count=n, **kw),
                    count_params(big[1])))
      add(summarise(f"CTF K={k} C={clusters}", [*coarse_steps, fine_call],
                    count_params(coarse[1]) + count_params(fine[1])))
      add(summarise(f"CTF-VQD {steps[0]} steps K={k} C={clusters}", [coarse_denoise, fine_call],
                    count_params(coarse_vqd[1]) + count_params(fine[1])))
  if full:
    for row, (generator, params, settings) in timed:
      if progress:
        progress(rows)
      _time_whole_sampler(row, generator, params, settings, text_len, text_dim)
  return rows


# --full leaves the extrapolation of a sampler expected to take longer than this per batch.
FULL_LIMIT_S = 60.0


def _whole_samplers(vqd, ar_base, guidance) -> dict[str, Any]:
  """``{"vqd": steps -> (generator, params, settings), "ar": cached -> (...)}``."""
  from vqd_jax import autoregressive, diffusion  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference.generate import TokenGenerator  # pylint: disable=import-outside-toplevel
  denoise = TokenGenerator(vqd[0], diffusion.MaskAndReplace(vqd[0].num_classes, 100))
  decode = autoregressive.ARGenerator(ar_base[0])
  return {
      "vqd": lambda steps: (denoise, vqd[1], diffusion.SamplerConfig(
          num_steps=steps, guidance_scale=guidance)),
      "ar": lambda cached: (decode, ar_base[1], autoregressive.ARSamplerConfig(
          guidance_scale=guidance, use_cache=cached)),
  }


def _time_whole_sampler(row, generator, params, settings, text_len, text_dim) -> None:
  """The row's images/s from its whole token sampler, in place of the extrapolation."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from vqd_jax.text import Conditioning  # pylint: disable=import-outside-toplevel
  b = row["batch"]
  if b / row["images_per_s"] > FULL_LIMIT_S:
    return  # minutes per batch (the uncached AR at 32x32): the extrapolation stands
  cond = Conditioning(jnp.zeros((b, text_len, text_dim), jnp.float32))
  program = jax.jit(lambda p, k: generator.generate_tokens(p, cond, k, settings, null=cond))
  row["images_per_s"] = b / median_seconds(lambda: program(params, jax.random.key(0)), 1)
  row["timing"] = "whole token sampler"


# -- the quickstart's trained models -------------------------------------------------------------


def _score(workdir: str, name: str) -> dict[str, Any]:
  path = os.path.join(workdir, SCORE_FILES[name])
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    report = json.load(f)["score"]
  score, count = report["score"], report.get("num_samples", 0)
  se = float(np.sqrt(score * (1 - score) / count)) if count else 0.0
  return {"shapes_score": score, "score_se": se}


def _pipeline_row(name, pipe, settings, calls, params, batch, extra) -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  from vqd_jax.evaluation.shapes import heldout_prompts  # pylint: disable=import-outside-toplevel
  prompts = heldout_prompts(batch, pipe.image_size[0])
  seconds = median_seconds(lambda: pipe.generate(pipe.params, prompts, jax.random.key(0),
                                                 settings), 2)
  row = summarise(name, calls, params, extra, measure=False)
  row.update(images_per_s=batch / seconds, timing="pipeline end to end (prompts to images)")
  return row


def trained_rows(workdir: str, batches: Sequence[int], steps: Sequence[int]
                 ) -> list[dict[str, Any]]:
  """Every model the quickstart trained in ``workdir``, timed through its pipeline."""
  # pylint: disable=import-outside-toplevel
  from vqd_jax import diffusion
  from vqd_jax.inference import VQDiffusionPipeline
  from vqd_jax.inference.ar_pipeline import ARPipeline
  from vqd_jax.inference.ctf_pipeline import CTFPipeline
  rows = []
  for name, folders, kind in TRAINED:
    dirs = [os.path.join(workdir, f) for f in folders]
    if not all(os.path.isdir(os.path.join(d, "checkpoints")) for d in dirs):
      print(f"{name}: not trained in {workdir} (python -m vqd_jax.quickstart --model ...)")
      continue
    score = _score(workdir, name)
    if kind == "vqd":
      pipe = VQDiffusionPipeline.from_run(dirs[0])
      defaults = pipe.sampling_defaults
      cond = pipe.conditioner
      for b in batches:
        r = _rows(diffusion.SamplerConfig(**defaults).guidance_scale != 1.0, b)
        call = denoiser_call(pipe.transformer, pipe.params["transformer"], r, cond.length,
                             cond.width, 1, b)
        for s in steps:
          settings = diffusion.SamplerConfig(**{**defaults, "num_steps": s})
          rows.append(_pipeline_row(f"VQD {s} steps", pipe, settings, [call.with_count(s)],
                                    count_params(pipe.params["transformer"]), b,
                                    score if s == defaults["num_steps"] else {}))
    elif kind == "ar":
      pipe = ARPipeline.from_run(dirs[0])
      cond, model, n = pipe.conditioner, pipe.model, pipe.model.num_tokens
      for b in batches:
        for cached in (True, False):
          settings = pipe.settings(use_cache=cached)
          r = _rows(settings.guided, b)
          make = ar_step_calls if cached else (lambda *a: [ar_full_call(*a)])
          calls = make(model, pipe.params["transformer"], r, cond.length, cond.width, n, b)
          rows.append(_pipeline_row(f"AR {'cached' if cached else 'uncached'}", pipe, settings,
                                    calls, count_params(pipe.params["transformer"]), b, score))
    else:
      pipe = CTFPipeline.from_runs(*dirs)
      first, second = pipe.coarse_run, pipe.fine_run
      settings = pipe.settings()
      for b in batches:
        r = _rows(settings.coarse.guidance_scale != 1.0, b)
        c = first.conditioner
        if first.config.stage == "ar":
          coarse = ar_step_calls(first.generator.model, first.params["transformer"], r, c.length,
                                 c.width, first.generator.model.num_tokens, b)
        else:
          s = dataclasses.asdict(settings.coarse)["num_steps"]
          coarse = [denoiser_call(first.generator.denoiser, first.params["transformer"], r,
                                  c.length, c.width, s, b)]
        fine = ar_full_call(second.model, second.params["transformer"],
                            _rows(settings.fine.guided, b), second.conditioner.length,
                            second.conditioner.width, 1, b, name="fine pass")
        params = count_params(first.params["transformer"]) + count_params(
            second.params["transformer"])
        rows.append(_pipeline_row(name, pipe, settings, [*coarse, fine], params, b, score))
  return rows
