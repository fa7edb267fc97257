"""Prompts -> images with CTF's two stages (``configs/ctf.py``): coarse labels, then every code.

  pipe = CTFPipeline.from_runs("runs/ctf_coarse", "runs/ctf_fine")
  images = pipe(["a large red circle"], seed=0)                      # uint8 [B, H, W, 3]

Stage 1 is an AR run over the coarse labels (drawn position by position with its key-value cache)
or a diffusion run over them (CTF-diffusion); stage 2 is the fine run, one bidirectional pass
from the coarse map to the codes, drawn at τ₂ within each position's cluster. One jitted
program; each stage encodes the prompts with its own conditioner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqd_jax import autoregressive, build, ctf, diffusion, text
from vqd_jax.inference import loading
from vqd_jax.inference.autoencoder import FrozenAutoencoder
from vqd_jax.inference.run_autoencoder import run_autoencoder

CoarseSettings = Union[autoregressive.ARSamplerConfig, diffusion.SamplerConfig]


@dataclasses.dataclass(frozen=True)
class CTFSettings:
  """Both stages' settings (hashable): ``coarse`` of the first stage's kind, ``fine`` τ₂ etc."""
  coarse: CoarseSettings
  fine: ctf.FineSamplerConfig


@dataclasses.dataclass(frozen=True, eq=False)
class FineRun:
  """A trained ``stage=ctf_fine`` run: the fine predictor, its table, conditioner, weights."""
  config: ml_collections.ConfigDict
  workdir: str
  step: int
  conditioner: text.Conditioner
  model: autoregressive.ARTransformer
  table: ctf.CoarseTable
  autoencoder: FrozenAutoencoder
  params: dict[str, Any]

  def fine_settings(self, **overrides: Any) -> ctf.FineSamplerConfig:
    """The run's ``config.sampling.fine_*`` as a ``FineSamplerConfig``, with overrides."""
    return loading.sampling_settings(self.config, ctf.FineSamplerConfig, "fine_", **overrides)


def load_fine_run(workdir: str, step: int | None = None, use_ema: bool = True) -> FineRun:
  """A trained fine-stage run (its code -> cluster table is read from the workdir)."""
  ckpt, step, config = loading.open_run(
      workdir, "ctf_fine", step, "python -m vqd_jax.train --config configs/ctf.py:shapes_fine "
      f"--workdir {workdir} --config.vqvae_workdir=...")
  autoencoder = run_autoencoder(config, workdir)
  conditioner = build.conditioner(config, workdir)
  table = ctf.load_coarse_table(workdir)
  grid = autoencoder.token_grid(config.data.image_size)
  model = build.ar_model(config, autoencoder.num_codes, grid, conditioner.width,
                         input_classes=table.num_clusters)

  def init(key, states, mask):
    return model.init(key, jnp.zeros((1, model.num_tokens), jnp.int32), states, mask)["params"]

  params = loading.restore_params(ckpt, step, config,
                            loading.abstract_params(conditioner, init), use_ema)
  return FineRun(config, workdir, step, conditioner, model, table, autoencoder, params)


def load_coarse_run(workdir: str, step: int | None = None, use_ema: bool = True) -> Any:
  """A first-stage run, AR or diffusion (``ARRun`` or ``DiffusionRun``)."""
  stage = loading.run_stage(workdir)
  load = {"ar": loading.load_ar_run, "diffusion": loading.load_diffusion_run}.get(stage)
  if load is None:
    raise ValueError(f"{workdir} holds a {stage!r} run; CTF's first stage is an 'ar' or "
                     "'diffusion' run of configs/ctf.py (<size>_coarse or <size>_coarse_vqd).")
  run = load(workdir, step=step, use_ema=use_ema)
  if not loading.coarse_stage(run.config):
    raise ValueError(f"{workdir} draws codes, not coarse labels: give a first stage trained with "
                     "configs/ctf.py:<size>_coarse or <size>_coarse_vqd.")
  return run


class CTFPipeline:
  """Both stages as a callable (see the module docstring)."""

  def __init__(self, coarse: Any, fine: FineRun):
    table = ctf.load_coarse_table(coarse.workdir)
    if not np.array_equal(table.labels, fine.table.labels):
      raise ValueError(f"The stages use different code -> cluster tables ({coarse.workdir}, "
                       f"{fine.workdir}): train both on the same token records and config.ctf.")
    self.coarse_run, self.fine_run = coarse, fine
    self.members = jnp.asarray(ctf.cluster_members(table.labels, table.num_clusters))
    self.autoencoder = fine.autoencoder
    self.params = {"coarse": coarse.params, "fine": fine.params}
    self.checkpoint_step = (coarse.step, fine.step)
    self.sampling_defaults = {"coarse": dict(coarse.config.sampling.to_dict()),
                              "fine": dict(fine.config.sampling.to_dict())}
    self._program = jax.jit(self._generate_impl, static_argnames=("settings",))

  @classmethod
  def from_runs(cls, coarse_workdir: str, fine_workdir: str, use_ema: bool = True
                ) -> "CTFPipeline":
    return cls(load_coarse_run(coarse_workdir, use_ema=use_ema),
               load_fine_run(fine_workdir, use_ema=use_ema))

  @property
  def image_size(self) -> tuple[int, int]:
    f, model = self.autoencoder.downsample_factor, self.fine_run.model
    return model.height * f, model.width * f

  def settings(self, fine: dict[str, Any] | None = None, **coarse: Any) -> CTFSettings:
    """The runs' settings with non-None overrides: ``coarse`` keyword arguments for the first
    stage's sampler, ``fine`` for ``FineSamplerConfig``."""
    return CTFSettings(self.coarse_run.sampler_settings(**coarse),
                       self.fine_run.fine_settings(**(fine or {})))

  def _generate_impl(self, params, ids, key, *, settings: CTFSettings):
    (ids_c, mask_c), (ids_f, mask_f) = ids
    k_coarse, k_fine = jax.random.split(key)
    first, second = self.coarse_run, self.fine_run
    cond = first.conditioner.encode(params["coarse"], ids_c, mask_c)
    null = first.conditioner.null(params["coarse"], ids_c.shape[0])
    labels = first.generator.generate_tokens(params["coarse"]["transformer"], cond, k_coarse,
                                             settings.coarse, null=null)
    rows = second.conditioner.encode(params["fine"], ids_f, mask_f)
    inputs = labels
    if settings.fine.guided:
      rows = text.stack_rows(second.conditioner.null(params["fine"], ids_f.shape[0]), rows)
      inputs = jnp.concatenate([labels, labels])
    log_p = second.model.apply({"params": params["fine"]["transformer"]}, inputs, rows.states,
                               rows.mask)
    members = self.members if second.config.ctf.restrict else None
    codes = ctf.sample_fine(log_p, labels, k_fine, settings.fine, members)
    return labels, codes, self.autoencoder.decode(codes)  # uint8

  def _run(self, params, prompts, key, settings):
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
      raise ValueError("No prompts given.")
    ids = tuple(tuple(jnp.asarray(a) for a in run.conditioner.tokenize(prompts))
                for run in (self.coarse_run, self.fine_run))
    return self._program(params, ids, key, settings=settings)

  def generate(self, params, prompts: Sequence[str], key: jax.Array, settings: CTFSettings
               ) -> np.ndarray:
    """uint8 images ``[B, H, W, 3]`` with explicit params, key and settings."""
    return np.asarray(self._run(params, prompts, key, settings)[2])

  def generate_tokens(self, prompts: str | Sequence[str], seed: int = 0,
                      settings: CTFSettings | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(coarse labels [B, N], codes [B, N])``."""
    labels, codes, _ = self._run(self.params, prompts, jax.random.key(seed),
                                 settings or self.settings())
    return np.asarray(labels), np.asarray(codes)

  def __call__(self, prompts: str | Sequence[str], seed: int = 0,
               settings: CTFSettings | None = None) -> np.ndarray:
    """uint8 images ``[B, H, W, 3]``, one per prompt (default: the runs' own settings)."""
    return np.asarray(self._run(self.params, prompts, jax.random.key(seed),
                                settings or self.settings())[2])
