r"""CTF: coarse labels (k-means clusters of the codebook) first, then every fine code at once.

Presets (``--config configs/ctf.py:<size>_<stage>``), sizes tiny, shapes, S, B:
  <size>_coarse      stage 1: the AR model (configs/ar.py) over the coarse labels
  <size>_coarse_vqd  stage 1 as mask-and-replace diffusion (configs/diffusion.py) over the labels
  <size>_fine        stage 2: a bidirectional text-conditioned transformer, coarse map -> codes

The stages train independently on the ground-truth coarse labels (the code -> cluster table applied
to the data's codes; ``python -m vqd_jax.encode --coarse-clusters C`` writes the table beside token
records, or the run computes it from the autoencoder's codebook). Sample both together:
``python -m vqd_jax.sample --workdir FINE_RUN --coarse-workdir COARSE_RUN``.

``ctf``: num_clusters (C), balanced (equal-size clusters), seed (of k-means), restrict (the fine
stage puts mass only on each position's cluster), coarse_workdir (the first stage's run, used by
sampling the fine stage). ``sampling`` of a fine run: ``fine_temperature`` (τ₂), ``fine_top_k``,
``fine_guidance_scale``; the first stage's own ``sampling`` has τ₁ (``temperature``) and guidance.
CTF's final recipe: C = 512, guidance 2.0, τ₁ = τ₂ = 1.1, stage-2 top-k all.
"""

import importlib.util
import os

import ml_collections


def _sibling(name: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"vqd_jax_{name}_configs", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# Coarse labels per size: shapes' autoencoder has 128 codes (16 clusters of 8), S and B CTF's 512.
CLUSTERS = {"tiny": 4, "shapes": 16, "S": 512, "B": 512}


def get_config(preset: str = "shapes_coarse") -> ml_collections.ConfigDict:
  size, _, stage = preset.partition("_")
  if size not in CLUSTERS or stage not in ("coarse", "coarse_vqd", "fine"):
    raise ValueError(f"Unknown preset {preset!r}: use <size>_coarse, <size>_coarse_vqd or "
                     f"<size>_fine with size one of {sorted(CLUSTERS)}.")
  if stage == "coarse_vqd":
    c = _sibling("diffusion").get_config(size)
  else:
    c = _sibling("ar").get_config(size)
    c.sampling.temperature = 1.1  # τ₁ of CTF's final recipe
  c.ctf = ml_collections.ConfigDict(dict(num_clusters=CLUSTERS[size], balanced=False, seed=0,
                                         restrict=True, coarse_workdir=""))
  if size == "shapes":
    # The quickstart denoiser's minutes, half to each stage (docs/experiments.md): the AR and fine
    # stages run 6.4-6.6 steps/s, coarse diffusion 13.7.
    c.train.num_steps = 2600 if stage == "coarse_vqd" else 1250
    if stage == "coarse_vqd":
      c.diffusion.layout_warmup_steps = 800
  if stage == "fine":
    c.stage = "ctf_fine"
    c.train.sample_every = 0  # previews need the first stage (python -m vqd_jax.sample)
    c.sampling = ml_collections.ConfigDict(dict(fine_temperature=1.1, fine_top_k=0,
                                                fine_guidance_scale=1.0))
  return c
