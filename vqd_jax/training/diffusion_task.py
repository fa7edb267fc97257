"""The diffusion stage: a text-conditioned denoising transformer over frozen VQ tokens.

Parameters are ``{"transformer", "text_encoder", "null_embedding"}``. The VQ autoencoder is frozen
and loaded from ``config.vqvae_workdir`` (it encodes images when the data are not pre-encoded
tokens, and decodes previews). The text side is the run's ``Conditioner`` (``vqd_jax.build``): a
word tokenizer fitted on the training captions at the first start, or a pretrained CLIP text
encoder (``config.text.encoder="clip"``, frozen: its weights are copied into the checkpoints and
never updated). Either way its description is saved in the workdir, so sampling later uses exactly
the same vocabulary.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vqd_jax import build, diffusion
from vqd_jax import images as images_lib
from vqd_jax import text as text_lib
from vqd_jax.inference.generate import TokenGenerator
from vqd_jax.inference.loading import load_autoencoder
from vqd_jax.data import configured as data_config
from vqd_jax.training import optim as optim_lib
from vqd_jax.training import state as state_lib
from vqd_jax.training import warm_start as warm_start_lib


def _write_once(path: str, write) -> None:
  """``write(tmp)`` then rename: other hosts checking for ``path`` never see it half-written."""
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write(path + ".tmp")
    os.replace(path + ".tmp", path)


def save_text_assets(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Saves what the run's conditioner needs in ``workdir`` (once; a resumed run keeps them)."""
  if config.text.encoder == "clip":
    if not os.path.exists(os.path.join(workdir, build.CLIP_TEXT_DIR, "config.json")):
      if not config.text.clip_path:
        raise ValueError("config.text.encoder='clip' needs config.text.clip_path: a local CLIP "
                         "text checkpoint folder (transformers layout, or a diffusers pipeline "
                         "root with text_encoder/ and tokenizer/).")
      build.save_clip_description(config.text.clip_path, workdir)
    return
  path = os.path.join(workdir, build.WORD_TOKENIZER_FILE)
  if not os.path.exists(path):
    from vqd_jax import data as data_lib  # pylint: disable=import-outside-toplevel
    captions = data_lib.iter_captions(data_config.make_source(config.data))
    tokenizer = text_lib.WordTokenizer.fit(captions, max_length=config.text.max_length)
    _write_once(path, tokenizer.save)


class DiffusionTask:
  """Implements :class:`vqd_jax.training.state.Task` for the denoiser (see module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    if config.get("init_from"):
      warm_start_lib.check_base(config, workdir)
    save_text_assets(config, workdir)
    self.vq = load_autoencoder(config.vqvae_workdir)
    self.conditioner = build.conditioner(config, workdir)
    grid = self.vq.token_grid(config.data.image_size)
    self.process = build.process(config, self.vq.num_codes)
    self.denoiser = build.denoiser(config, self.vq.num_codes, grid, self.conditioner.width)
    tx = optim_lib.make_optimizer(config.optim, config.train.num_steps)
    if not self.conditioner.trainable:  # a pretrained encoder stays as it was loaded
      tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()},
                                 self.conditioner.trainable_labels)
    self.tx = tx
    self._sample_program = None  # (generator, jitted program), built by the first preview

  @property
  def num_tokens(self) -> int:
    """Image tokens per example (N)."""
    return self.denoiser.num_tokens

  # -- data ---------------------------------------------------------------------------------------

  def tokenize_one(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = self.conditioner.tokenize([caption])
    return ids[0], mask[0]

  def make_train_iterator(self, process_index: int, process_count: int):
    return data_config.make_iterator(self.config.data, self.config.train.batch_size,
                                    self.config.seed, process_index, process_count,
                                    tokenize=self.tokenize_one)

  def _tokens(self, batch: dict[str, jax.Array]) -> jax.Array:
    """``[B, N]`` int32 codes: pre-encoded, or encoded here by the frozen VQ encoder."""
    if "tokens" in batch:
      return batch["tokens"].reshape(batch["tokens"].shape[0], -1).astype(jnp.int32)
    codes = self.vq.encode(batch["image"])
    return codes.reshape(codes.shape[0], -1)

  # -- state --------------------------------------------------------------------------------------

  def _pretrained_text_params(self) -> Any:
    if self.conditioner.source != "clip":
      return None
    from vqd_jax.interop.clip import load_clip_text_encoder  # pylint: disable=import-outside-toplevel
    return load_clip_text_encoder(self.config.text.clip_path)[1]

  def init_state(self, key: jax.Array, batch: dict[str, jax.Array]) -> state_lib.TrainState:
    return self.state_from_params(self.init_params(key, batch))

  def state_from_params(self, params: Any, ema: Any = None, history: Any = None
                        ) -> state_lib.TrainState:
    """A step-0 state around ``params`` (EMA from ``ema`` or ``params``; fresh optimizer)."""
    if self.config.train.ema_decay <= 0:
      ema = None
    elif ema is None:
      ema = params
    history = history or diffusion.LossHistory.create(self.process.num_timesteps)
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=self.tx.init(params), ema_params=ema,
                                extra={"loss_history": history})

  def init_params(self, key: jax.Array, batch: dict[str, jax.Array]) -> Any:
    """Fresh (boxed) ``{"transformer", "text_encoder", "null_embedding"}``."""
    # XLA's CPU backend compiles every threefry draw slowly; one draw seeding an 'rbg' key makes
    # parameter init compile several times faster and stays deterministic.
    seed = jax.random.randint(key, (), 0, jnp.iinfo(jnp.int32).max)
    k_tr, k_te, k_null = jax.random.split(jax.random.key(seed, impl="rbg"), 3)
    ids, mask = batch["text_ids"], batch["text_mask"]
    params = self.conditioner.init(k_te, k_null, ids, mask, self._pretrained_text_params())
    b = ids.shape[0]
    states = jnp.zeros((b, self.conditioner.length, self.conditioner.width), jnp.float32)
    pooled = (jnp.zeros((b, self.denoiser.global_cond_dim), jnp.float32)
              if self.denoiser.global_cond_dim else None)
    params["transformer"] = self.denoiser.init(
        k_tr, jnp.zeros((b, self.denoiser.num_tokens), jnp.int32), jnp.zeros((b,), jnp.int32),
        states, mask, global_cond=pooled)["params"]
    return params

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
    return start(params, ema, diffusion.LossHistory(**history))

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

  def conditioning(self, params, batch, key) -> text_lib.Conditioning:
    """The batch's text conditioning, captions dropped to the null embedding at the set rate."""
    cond = self.conditioner.encode(params, batch["text_ids"], batch["text_mask"])
    rows = batch["text_ids"].shape[0]
    return self.conditioner.drop(key, cond, self.conditioner.null(params, rows),
                                 self.config.data.caption_drop_rate)

  def loss_fn(self, params, batch, key, history, step):
    k_drop, k_t, k_q, k_dropout = jax.random.split(key, 4)
    x0 = self._tokens(batch)
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

  def train_step(self, state: state_lib.TrainState, batch, key):
    history = state.extra["loss_history"]
    grads, (terms, t) = jax.grad(self.loss_fn, has_aux=True)(state.params, batch, key, history,
                                                             state.step)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      ema = state_lib.ema_update(ema, params, state_lib.ema_decay_at(
          state.step, self.config.train.ema_decay))
    history = diffusion.update_history(history, t, terms.vb)
    metrics = {**terms.metrics(), "grad_norm": optax.global_norm(grads)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema, extra={"loss_history": history})
    return new_state, metrics

  def sampling_params(self, transformer_params: Any) -> Any:
    """What ``TokenGenerator`` samples with (experts wrap their stacked weights)."""
    return transformer_params

  # -- previews -----------------------------------------------------------------------------------

  def generate(self, params, prompts: Sequence[str], key: jax.Array,
               settings: diffusion.SamplerConfig) -> np.ndarray:
    """uint8 images ``[B, H, W, 3]`` for ``prompts`` (through ``TokenGenerator.generate_tokens``)."""
    if self._sample_program is None:
      # Laid out when first used: under the training mesh the rows need no host row mesh.
      generator = TokenGenerator.for_host(self.denoiser, self.process)

      def program(params, ids, mask, key, settings):
        cond = self.conditioner.encode(params, ids, mask)
        null = self.conditioner.null(params, ids.shape[0])
        return generator.generate_tokens(self.sampling_params(params["transformer"]), cond, key,
                                         settings, null=null)

      self._sample_program = generator, jax.jit(program, static_argnames=("settings",))
    generator, program = self._sample_program
    ids, mask = self.conditioner.tokenize(list(prompts))
    tokens = program(generator.place(params), jnp.asarray(ids), jnp.asarray(mask), key,
                     settings=settings)
    # Through the host: the frozen autoencoder lives on one device, the tokens may span several.
    return np.asarray(self.vq.decode(np.asarray(tokens)))

  def write_previews(self, state, step: int, writer, directory: str) -> None:
    """A grid of samples for ``config.preview_prompts`` (process 0 writes it)."""
    prompts = list(self.config.preview_prompts)
    params = state.ema_params if state.ema_params is not None else state.params
    settings = diffusion.SamplerConfig(**self.config.sampling.to_dict())
    images = self.generate(params, prompts, jax.random.key(0), settings)
    grid = images_lib.image_grid(images)
    if jax.process_index() == 0:
      images_lib.save_png(os.path.join(directory, f"samples_{step:07d}.png"), grid, upscale=4)
      writer.write_image(step, "samples", grid)
      with open(os.path.join(directory, "prompts.json"), "w", encoding="utf-8") as f:
        json.dump(prompts, f)
