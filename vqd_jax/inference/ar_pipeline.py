"""Prompts -> images with a trained autoregressive run (``configs/ar.py``).

  pipe = ARPipeline.from_run("runs/ar")
  images = pipe(["a large red circle"], seed=0, temperature=1.0, guidance_scale=2.0)  # uint8

One jitted program per setting: the prompts are encoded, the tokens drawn position by position
(``vqd_jax.autoregressive.ARGenerator``: key-value cache, guidance by batch concatenation) and
decoded by the run's frozen autoencoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax import autoregressive
from vqd_jax.inference.loading import ARRun, load_ar_run, refuse_coarse_stage


class ARPipeline:
  """A trained AR run as a callable (see the module docstring)."""

  def __init__(self, run: ARRun):
    self.run = run
    self.conditioner = run.conditioner
    self.generator = run.generator
    self.autoencoder = run.autoencoder
    self.params = run.params
    self.checkpoint_step = run.step
    self.sampling_defaults: dict[str, Any] = dict(run.config.sampling.to_dict())
    self._program = jax.jit(self._generate_impl, static_argnames=("settings",))

  @classmethod
  def from_run(cls, workdir: str, step: int | None = None, use_ema: bool = True
               ) -> "ARPipeline":
    run = load_ar_run(workdir, step=step, use_ema=use_ema)
    refuse_coarse_stage(run)
    return cls(run)

  @property
  def model(self) -> autoregressive.ARTransformer:
    return self.generator.model

  @property
  def token_grid(self) -> tuple[int, int]:
    return self.model.height, self.model.width

  @property
  def image_size(self) -> tuple[int, int]:
    f = self.autoencoder.downsample_factor
    return self.model.height * f, self.model.width * f

  def settings(self, **overrides: Any) -> autoregressive.ARSamplerConfig:
    """The run's sampling settings with the non-None ``overrides``."""
    return self.run.sampler_settings(**overrides)

  def _generate_impl(self, params, ids, mask, key, *, settings):
    cond = self.conditioner.encode(params, ids, mask)
    null = self.conditioner.null(params, ids.shape[0]) if settings.guided else None
    tokens = self.generator.generate_tokens(params["transformer"], cond, key, settings, null=null)
    return tokens, self.autoencoder.decode(tokens)  # uint8

  def _run(self, params, prompts, key, settings):
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
      raise ValueError("No prompts given.")
    ids, mask = self.conditioner.tokenize(prompts)
    return self._program(params, jnp.asarray(ids), jnp.asarray(mask), key, settings=settings)

  def generate(self, params, prompts: Sequence[str], key: jax.Array,
               settings: autoregressive.ARSamplerConfig) -> np.ndarray:
    """uint8 images ``[B, H, W, 3]`` with explicit params, key and settings."""
    return np.asarray(self._run(params, prompts, key, settings)[1])

  def generate_tokens(self, prompts: str | Sequence[str], seed: int = 0, **overrides
                      ) -> np.ndarray:
    """Codes ``[B, N]`` int32; keyword arguments as in ``__call__``."""
    return np.asarray(self._run(self.params, prompts, jax.random.key(seed),
                                self.settings(**overrides))[0])

  def __call__(self, prompts: str | Sequence[str], seed: int = 0, *,
               temperature: float | None = None, top_k: int | None = None,
               top_p: float | None = None, guidance_scale: float | None = None,
               use_cache: bool | None = None) -> np.ndarray:
    """uint8 images ``[B, H, W, 3]``, one per prompt; None keeps the run's ``config.sampling``
    value (see ``vqd_jax.autoregressive.ARSamplerConfig`` for each setting)."""
    settings = self.settings(temperature=temperature, top_k=top_k, top_p=top_p,
                             guidance_scale=guidance_scale, use_cache=use_cache)
    return np.asarray(self._run(self.params, prompts, jax.random.key(seed), settings)[1])
