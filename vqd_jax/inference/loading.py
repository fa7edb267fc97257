"""Loading trained runs for inference: parameters only, no optimizer, no training code.

  vq = load_autoencoder("runs/quickstart/vqvae")        # a FrozenAutoencoder
  run = load_diffusion_run("runs/quickstart/diffusion") # conditioner, generator, autoencoder, params
  run = load_ar_run("runs/ar")                          # the same for an autoregressive run

A run's networks are rebuilt from the config saved in its checkpoint (``vqd_jax.build``); only the
parameters (the EMA copy when the run kept one) are read from disk.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vqd_jax import autoregressive, build, diffusion, text
from vqd_jax import checkpoint as ckpt_lib
from vqd_jax.inference.autoencoder import FrozenAutoencoder
from vqd_jax.inference.generate import TokenGenerator
from vqd_jax.inference.run_autoencoder import run_autoencoder
from vqd_jax.sharding import on_first_local_device, strip_boxes


class MissingRunError(FileNotFoundError):
  """No run, or not the checkpoint step asked for, where one is expected; says how to get one."""


class RunMismatchError(ValueError):
  """A run of another stage where a run of one stage is expected."""


def open_run(workdir: str, stage: str, step: int | None, train_hint: str
          ) -> tuple[ckpt_lib.Checkpointer, int, ml_collections.ConfigDict]:
  """``(checkpointer, step, config)`` of a ``stage`` run.

  Raises:
    MissingRunError: no checkpoint in ``workdir`` (or not ``step``).
    RunMismatchError: the run is not a ``stage`` run.
  """
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False, read_only=True)
  steps = ckpt.all_steps()
  if step is not None and step not in steps:
    ckpt.close()
    raise MissingRunError(f"No checkpoint step {step} in {os.path.abspath(workdir)}/checkpoints "
                          f"(its steps: {steps or 'none'}); pick one of them, or the latest by "
                          "leaving the step out.")
  step = steps[-1] if step is None and steps else step
  if step is None:
    ckpt.close()
    what = {"vqvae": "autoencoder", "diffusion": "denoiser"}.get(stage, f"{stage} model")
    raise MissingRunError(f"No {what} checkpoint in {os.path.abspath(workdir)}/checkpoints: "
                          f"train the {what} first ({train_hint}).")
  config = ml_collections.ConfigDict(ckpt.restore_config(step))
  if config.get("stage") != stage:
    ckpt.close()
    raise RunMismatchError(f"{workdir} holds a {config.get('stage')!r} run, not a {stage} run.")
  return ckpt, step, config


def restore_params(ckpt: ckpt_lib.Checkpointer, step: int, config: ml_collections.ConfigDict,
             boxed_params: Any, use_ema: bool) -> Any:
  """The run's parameters (EMA when kept and wanted), restored onto this process's first device."""
  field = "ema_params" if use_ema and config.train.ema_decay > 0 else "params"
  restored = ckpt.restore_subtree(step, {field: on_first_local_device(boxed_params)})
  ckpt.close()
  return restored[field]


def load_autoencoder(workdir: str) -> FrozenAutoencoder:
  """The latest weights of a ``stage=vqvae`` run (EMA weights when the run kept them)."""
  return load_autoencoder_with_config(workdir)[0]


def load_autoencoder_with_config(workdir: str
                                 ) -> tuple[FrozenAutoencoder, ml_collections.ConfigDict]:
  """``(autoencoder, the run's config)`` of a ``stage=vqvae`` run."""
  if not workdir:
    raise MissingRunError("config.vqvae_workdir is empty: point it at the workdir of a trained "
                          "autoencoder (python -m vqd_jax.train --config configs/vqvae.py ...).")
  ckpt, step, config = open_run(workdir, "vqvae", None,
                             "python -m vqd_jax.train --config configs/vqvae.py:shapes "
                             f"--workdir {workdir}")
  model = build.autoencoder(config)
  size = config.data.image_size
  images = jnp.zeros((1, size, size, 3), jnp.float32)
  boxed = jax.eval_shape(lambda k: model.init(k, images, train=True)["params"], jax.random.key(0))
  return FrozenAutoencoder(model, restore_params(ckpt, step, config, boxed, use_ema=True)), config


def sampling_settings(config: ml_collections.ConfigDict, settings_cls: type, prefix: str = "",
                      **overrides: Any) -> Any:
  """``settings_cls`` from a run's ``config.sampling`` fields (those named ``prefix + field``,
  prefix dropped), with the non-None ``overrides``."""
  fields = {k[len(prefix):]: v for k, v in config.sampling.to_dict().items()
            if k.startswith(prefix)}
  fields.update({k: v for k, v in overrides.items() if v is not None})
  return settings_cls(**fields)


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionRun:
  """A trained diffusion run, ready to sample.

  Attributes:
    config: the run's config; workdir, step: where and which checkpoint.
    conditioner: prompts -> conditioning; generator: conditioning -> tokens;
    autoencoder: tokens -> images.
    params: ``{"transformer", "text_encoder", "null_embedding"}`` (placed for the generator).
  """
  config: ml_collections.ConfigDict
  workdir: str
  step: int
  conditioner: text.Conditioner
  generator: TokenGenerator
  autoencoder: FrozenAutoencoder
  params: dict[str, Any]

  def sampler_settings(self, **overrides: Any) -> diffusion.SamplerConfig:
    """The run's ``config.sampling`` as a ``SamplerConfig``, with non-None ``overrides``."""
    return sampling_settings(self.config, diffusion.SamplerConfig, **overrides)


def run_networks(config: ml_collections.ConfigDict, workdir: str, autoencoder: FrozenAutoencoder
                 ) -> tuple[text.Conditioner, TokenGenerator]:
  """The conditioner and token generator a diffusion config describes (no weights)."""
  conditioner = build.conditioner(config, workdir)
  grid = autoencoder.token_grid(config.data.image_size)
  classes = build.num_classes(config, autoencoder.num_codes)
  denoiser = build.denoiser(config, classes, grid, conditioner.width, conditioner.pooled_width)
  return conditioner, TokenGenerator.for_host(denoiser, build.process(config, classes))


def abstract_params(conditioner: text.Conditioner, init_network: Callable[..., Any]) -> Any:
  """The (boxed) parameter shapes of a token-model run, nothing allocated.

  ``init_network(key, states [1, L, D], mask [1, L])`` initialises the network's params."""
  length = conditioner.length

  def init(key):
    ids, mask = jnp.zeros((1, length), jnp.int32), jnp.ones((1, length), bool)
    pretrained = None
    if conditioner.source == "clip":
      pretrained = conditioner.encoder.init(key, ids)["params"]
    params = conditioner.init(key, key, ids, mask, pretrained=pretrained)
    context = conditioner.context_length
    states = jnp.zeros((1, context, conditioner.width), jnp.float32)
    params["transformer"] = init_network(key, states, jnp.ones((1, context), bool))
    return params

  return jax.eval_shape(init, jax.random.key(0))


def init_denoiser(denoiser: nn.Module) -> Callable[..., Any]:
  """``init_network`` of :func:`abstract_params` for a denoiser."""
  def init(key, states, mask):
    pooled = (jnp.zeros((1, denoiser.global_cond_dim), jnp.float32)
              if denoiser.global_cond_dim else None)
    x = jnp.zeros((1, denoiser.num_tokens), jnp.int32)
    return denoiser.init(key, x, jnp.zeros((1,), jnp.int32), states, mask,
                         global_cond=pooled)["params"]
  return init


def load_diffusion_run(workdir: str, step: int | None = None, use_ema: bool = True
                       ) -> DiffusionRun:
  """A trained ``stage=diffusion`` run: its networks, weights and frozen autoencoder.

  An ensemble of expert denoisers (``config.experts``) comes back with
  ``params["transformer"]`` a ``diffusion.ExpertParams``, which ``TokenGenerator`` routes by t.
  """
  ckpt, step, config = open_run(workdir, "diffusion", step,
                             "python -m vqd_jax.train --config configs/diffusion.py:shapes "
                             f"--workdir {workdir} --config.vqvae_workdir=...; or sample a "
                             "diffusers checkpoint with --pretrained")
  autoencoder = run_autoencoder(config, workdir)
  conditioner, generator = run_networks(config, workdir, autoencoder)
  intervals = build.expert_intervals(config)
  abstract = abstract_params(conditioner, init_denoiser(generator.denoiser))
  if intervals is not None:  # an ensemble: the denoiser's leaves stacked [E, ...]
    abstract["transformer"] = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct((intervals.num_experts,) + s.shape, s.dtype),
        strip_boxes(abstract["transformer"]))
  params = restore_params(ckpt, step, config, abstract, use_ema)
  if intervals is not None:
    params["transformer"] = diffusion.ExpertParams(params["transformer"], intervals)
  return DiffusionRun(config=config, workdir=workdir, step=step, conditioner=conditioner,
                      generator=generator, autoencoder=autoencoder,
                      params=generator.place(params))



@dataclasses.dataclass(frozen=True, eq=False)
class ARRun:
  """A trained autoregressive run, ready to sample (fields as in :class:`DiffusionRun`)."""
  config: ml_collections.ConfigDict
  workdir: str
  step: int
  conditioner: text.Conditioner
  generator: autoregressive.ARGenerator
  autoencoder: FrozenAutoencoder
  params: dict[str, Any]

  def sampler_settings(self, **overrides: Any) -> autoregressive.ARSamplerConfig:
    """The run's ``config.sampling`` as an ``ARSamplerConfig``, with non-None ``overrides``."""
    return sampling_settings(self.config, autoregressive.ARSamplerConfig, **overrides)


def load_ar_run(workdir: str, step: int | None = None, use_ema: bool = True) -> ARRun:
  """A trained ``stage=ar`` run: its networks, weights and frozen autoencoder."""
  ckpt, step, config = open_run(workdir, "ar", step,
                             "python -m vqd_jax.train --config configs/ar.py:shapes "
                             f"--workdir {workdir} --config.vqvae_workdir=...")
  autoencoder = run_autoencoder(config, workdir)
  conditioner = build.conditioner(config, workdir)
  grid = autoencoder.token_grid(config.data.image_size)
  model = build.ar_model(config, build.num_classes(config, autoencoder.num_codes), grid,
                         conditioner.width)

  def init(key, states, mask):
    return model.init(key, jnp.zeros((1, model.num_tokens), jnp.int32), states, mask)["params"]

  params = restore_params(ckpt, step, config, abstract_params(conditioner, init), use_ema)
  return ARRun(config=config, workdir=workdir, step=step, conditioner=conditioner,
               generator=autoregressive.ARGenerator(model), autoencoder=autoencoder,
               params=params)


def run_stage(workdir: str) -> str:
  """The ``config.stage`` of the run in ``workdir`` (its latest checkpoint's config)."""
  local = "://" not in workdir
  if local and not os.path.isdir(os.path.join(workdir, "checkpoints")):  # nothing created
    raise FileNotFoundError(f"No checkpoint in {os.path.abspath(workdir)}/checkpoints: train a "
                            "run there first (python -m vqd_jax.train ...).")
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False, read_only=True)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {os.path.abspath(workdir)}/checkpoints: train a "
                              "run there first (python -m vqd_jax.train ...).")
    return str(ckpt.restore_config(step).get("stage"))
  finally:
    ckpt.close()


def coarse_stage(config: ml_collections.ConfigDict) -> bool:
  """Whether a run is CTF's first stage (it draws coarse labels, not codes)."""
  return build.is_coarse_stage(config)


def refuse_coarse_stage(run: Any) -> None:
  """A first-stage CTF run alone draws no images: say how to sample it."""
  if coarse_stage(run.config):
    raise ValueError(f"{run.workdir} is CTF's first stage (coarse labels): sample it with its "
                     f"fine stage, python -m vqd_jax.sample --workdir FINE_RUN --coarse-workdir "
                     f"{run.workdir}.")
