"""The diffusion stage: a text-conditioned denoising transformer over frozen VQ tokens.

What every token stage shares (frozen autoencoder, conditioner, data, state, previews) is
``vqd_jax.training.token_task``; here are the denoiser, its mask-and-replace loss with the
importance-sampling loss history, and warm starts from another run (``config.init_from``). With
``config.ctf.num_clusters`` it denoises CTF's coarse labels instead of the codes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vqd_jax import build, diffusion
from vqd_jax import text as text_lib
from vqd_jax.inference.generate import TokenGenerator
from vqd_jax.training import state as state_lib
from vqd_jax.training import warm_start as warm_start_lib
from vqd_jax.training.token_task import TokenModelTask


class DiffusionTask(TokenModelTask):
  """The denoiser's stage (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    if config.get("init_from"):
      warm_start_lib.check_base(config, workdir)
    self._generator = None  # TokenGenerator laid out for the host, built by the first preview
    super().__init__(config, workdir)

  def build_model(self):
    self.process = build.process(self.config, self.num_classes)
    return build.denoiser(self.config, self.num_classes, self.grid, self.conditioner.width,
                          self.conditioner.pooled_width)

  @property
  def denoiser(self):
    return self.model

  @property
  def num_tokens(self) -> int:
    """Image tokens per example (N)."""
    return self.denoiser.num_tokens

  def init_model(self, key, states, mask):
    b = states.shape[0]
    pooled = (jnp.zeros((b, self.denoiser.global_cond_dim), jnp.float32)
              if self.denoiser.global_cond_dim else None)
    return self.denoiser.init(
        key, jnp.zeros((b, self.denoiser.num_tokens), jnp.int32), jnp.zeros((b,), jnp.int32),
        states, mask, global_cond=pooled)["params"]

  def initial_extra(self):
    return {"loss_history": diffusion.LossHistory.create(self.process.num_timesteps)}

  def warm_start(self, state: state_lib.TrainState) -> state_lib.TrainState:
    """A fresh ``state`` restarted from ``config.init_from``'s weights, EMA and loss history
    (the loop calls it once, on a fresh start); ``state`` unchanged without ``init_from``."""
    if not self.config.init_from:
      return state
    params, ema, history = warm_start_lib.restore_base(self.config.init_from, state,
                                                       self.base_params)
    params, ema = self.params_from_base(params), self.params_from_base(ema)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    start = jax.jit(self.state_from_params, out_shardings=shardings)
    return start(params, ema, {"loss_history": diffusion.LossHistory(**history)})

  def base_params(self, params: Any) -> Any:
    """The single-denoiser tree that ``params`` (this run's, possibly abstract) start from."""
    return params

  def params_from_base(self, params: Any) -> Any:
    """This run's parameters from a single-denoiser run's (identity; experts stack them)."""
    return params

  # -- training -----------------------------------------------------------------------------------

  def _timesteps(self, key, history, batch_size: int, step):
    """``(t [B], p(t) [B])``: importance-sampled, or from the top of the chain while warming up."""
    dcfg = self.config.diffusion
    t, pt = diffusion.sample_timesteps(key, history, batch_size,
                                       importance=dcfg.importance_sampling)
    if dcfg.layout_warmup_steps:
      # Early steps see (nearly) fully masked inputs: learn where the caption puts each object.
      num_t = self.process.num_timesteps
      first = int(round(dcfg.layout_warmup_from * num_t))
      t_top, pt_top = diffusion.sample_top_timesteps(jax.random.fold_in(key, 1), batch_size,
                                                     first, num_t)
      early = step < dcfg.layout_warmup_steps
      t, pt = jnp.where(early, t_top, t), jnp.where(early, pt_top, pt)
    return t, pt

  def loss_fn(self, params, batch, key, history, step):
    k_drop, k_t, k_q, k_dropout = jax.random.split(key, 4)
    x0 = self.targets(batch)
    cond = self.conditioning(params, batch, k_drop)
    t, pt = self._timesteps(k_t, history, x0.shape[0], step)
    loss, terms = self.denoiser_loss(params["transformer"], x0, cond, t, pt, k_q, k_dropout)
    return loss, (terms, t)

  def denoiser_loss(self, transformer_params, x0, cond, t, pt, k_q, k_dropout):
    """``(loss, LossTerms)`` of one denoiser on codes ``x0 [B, N]`` noised at ``t [B]``."""
    x_t = self.process.q_sample(k_q, x0, t)
    dropout = self.config.model.dropout > 0
    log_x0 = self.denoiser.apply({"params": transformer_params}, x_t, t, cond.states,
                                 cond.mask, deterministic=not dropout, global_cond=cond.pooled,
                                 rngs={"dropout": k_dropout} if dropout else None)
    dcfg = self.config.diffusion
    return diffusion.diffusion_loss(
        self.process, log_x0, x0, x_t, t, pt, aux_weight=dcfg.aux_weight,
        adaptive_aux_weight=dcfg.adaptive_aux, mask_weight=tuple(dcfg.mask_weights))

  def step_loss(self, params, batch, key, extra, step):
    loss, (terms, t) = self.loss_fn(params, batch, key, extra["loss_history"], step)
    return loss, (terms.metrics(), (t, terms.vb))

  def update_extra(self, extra, aux):
    t, vb = aux
    return {"loss_history": diffusion.update_history(extra["loss_history"], t, vb)}

  def sampling_params(self, transformer_params: Any) -> Any:
    """What ``TokenGenerator`` samples with (experts wrap their stacked weights)."""
    return transformer_params

  # -- previews -----------------------------------------------------------------------------------

  def place(self, params: Any) -> Any:
    return self._host_generator().place(params)

  def _host_generator(self) -> TokenGenerator:
    if self._generator is None:  # laid out when first used: the training mesh needs none
      self._generator = TokenGenerator.for_host(self.denoiser, self.process)
    return self._generator

  def preview_tokens(self, params, cond: text_lib.Conditioning, null: text_lib.Conditioning,
                     key: jax.Array) -> jax.Array:
    settings = diffusion.SamplerConfig(**self.config.sampling.to_dict())
    return self._host_generator().generate_tokens(
        self.sampling_params(params["transformer"]), cond, key, settings, null=null)
