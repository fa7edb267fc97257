r"""AR stage: a text-conditioned autoregressive transformer over VQ tokens in raster order.

Presets (``--config configs/ar.py:<preset>``):
  tiny     unit tests and CPU smoke runs (seconds)
  shapes   the quickstart's data and autoencoder: procedural shapes, 8x8 tokens
  S, B     the VQ-Diffusion S and B widths and depths (``vqd_jax.transformer.presets``) for
           256x256 images -> 32x32 tokens; set ``--config.data.source`` like diffusion's S and B.

Data, text, optimiser and training fields are those of ``configs/diffusion.py`` (the same
preset's); ``model`` holds ``ARTransformer`` fields (its docstring explains each). The run sets
``num_classes`` (the autoencoder's codes), ``height``/``width`` and ``cross_attention_dim``.
``sampling`` is ``vqd_jax.autoregressive.ARSamplerConfig``.
"""

import importlib.util
import os

import ml_collections


def _diffusion_configs():
  """configs/diffusion.py, beside this file (the shared data, text, optimiser and train fields)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "diffusion.py")
  spec = importlib.util.spec_from_file_location("vqd_jax_diffusion_configs", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


SHARED = ("seed", "vqvae_workdir", "preview_prompts", "data", "text", "optim", "train", "mesh",
          "sharding_rules")


def token_model_config(stage: str, preset: str) -> ml_collections.ConfigDict:
  """A config of ``stage`` with the shared fields of diffusion's ``preset`` (model and sampling
  left for the caller)."""
  base = _diffusion_configs().get_config(preset)
  c = ml_collections.ConfigDict()
  c.stage = stage
  for field in SHARED:
    c[field] = base[field]
  c.model = ml_collections.ConfigDict(dict(
      num_layers=base.model.num_layers, num_heads=base.model.num_heads,
      head_dim=base.model.head_dim, mlp_ratio=base.model.mlp_ratio, dropout=0.0,
      remat=base.model.remat, dtype="float32", position_init=base.model.position_init))
  return c


def get_config(preset: str = "shapes") -> ml_collections.ConfigDict:
  if preset not in ("tiny", "shapes", "S", "B"):
    raise ValueError(f"Unknown preset {preset!r}: use tiny, shapes, S or B.")
  c = token_model_config("ar", preset)
  # guidance_scale: classifier-free guidance on log-probabilities (1 = off); use_cache: False
  # recomputes the whole prefix at every position (the VQ-Diffusion paper's AR baseline).
  c.sampling = ml_collections.ConfigDict(dict(temperature=1.0, top_k=0, top_p=1.0,
                                              guidance_scale=2.0, use_cache=True))
  if preset == "shapes":
    # The quickstart denoiser's width and depth; its MLP ratio 2, without the token patches and
    # local mixing a causal model cannot use. 2,500 steps at 6.3 steps/s take the minutes of the
    # denoiser's 5,000 at 13 (docs/experiments.md).
    c.model.update(mlp_ratio=2)
    c.train.num_steps = 2500
  if preset in ("S", "B"):
    c.sampling.guidance_scale = 3.0
  return c
