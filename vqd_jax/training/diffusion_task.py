"""The diffusion stage: a text-conditioned denoising transformer over frozen VQ tokens.

Parameters are ``{"transformer", "text_encoder", "null_embedding"}``; the VQ autoencoder is frozen and
loaded from ``config.vqvae_workdir`` (it encodes images when the data are not pre-encoded tokens, and
decodes samples). The tokenizer is fitted on the training captions at the first start and saved in
the workdir, so sampling later uses exactly the same vocabulary.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vqd_jax import diffusion
from vqd_jax import images as images_lib
from vqd_jax import row_blocks
from vqd_jax import text as text_lib
from vqd_jax import transformer as transformer_lib
from vqd_jax.sharding import on_first_local_device
from vqd_jax.training import data as train_data
from vqd_jax.training import optim as optim_lib
from vqd_jax.training import state as state_lib
from vqd_jax.training import frozen_vq as frozen_vq_lib

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
# config.model.dtype: the compute dtype of the denoiser and the text encoder. Parameters, gradients,
# optimizer state and EMA stay float32 (master weights); log-probabilities and losses are float32.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(model_config: ml_collections.ConfigDict):
  name = model_config.get("dtype", "float32")
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"config.model.dtype must be one of {list(COMPUTE_DTYPES)}, got {name!r}.")
  return COMPUTE_DTYPES[name]


def fit_or_load_tokenizer(config: ml_collections.ConfigDict, workdir: str
                          ) -> text_lib.WordTokenizer:
  """The run's tokenizer: loaded from the workdir, or fitted on the training captions and saved."""
  path = os.path.join(workdir, TOKENIZER_FILE)
  if os.path.exists(path):
    return text_lib.WordTokenizer.load(path)
  from vqd_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  source = train_data.make_source(config.data)
  tokenizer = text_lib.WordTokenizer.fit(data_lib.iter_captions(source),
                                         max_length=config.text.max_length)
  if jax.process_index() == 0:
    # Written under another name and renamed: other hosts may be checking for the file right now
    # and must never read it half-written (each fits the same tokenizer when it is absent).
    os.makedirs(workdir, exist_ok=True)
    tokenizer.save(path + ".tmp")
    os.replace(path + ".tmp", path)
  return tokenizer


class DiffusionTask:
  """Implements :class:`vqd_jax.training.state.Task` for the denoiser (see module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self.tokenizer = fit_or_load_tokenizer(config, workdir)
    self.vq = frozen_vq_lib.FrozenVQ.from_workdir(config.vqvae_workdir)
    grid_h, grid_w = self.vq.token_grid(config.data.image_size)
    self.num_tokens = grid_h * grid_w
    dcfg = config.diffusion
    self.process = diffusion.MaskAndReplace(num_classes=self.vq.num_codes,
                                            num_timesteps=dcfg.num_timesteps,
                                            schedule=dcfg.schedule)
    dtype = compute_dtype(config.model)
    model_fields = {k: v for k, v in config.model.items() if k != "dtype"}
    self.transformer = transformer_lib.Text2ImageTransformer(
        num_classes=self.vq.num_codes, height=grid_h, width=grid_w,
        num_embeds_ada_norm=dcfg.num_timesteps, cross_attention_dim=config.text.width,
        dtype=dtype, **model_fields)
    self.text_encoder = text_lib.TextEncoder(vocab_size=self.tokenizer.vocab_size,
                                             max_length=config.text.max_length,
                                             width=config.text.width,
                                             num_layers=config.text.num_layers,
                                             num_heads=config.text.num_heads,
                                             causal=config.text.get("causal", False), dtype=dtype)
    self.tx = optim_lib.make_optimizer(config.optim, config.train.num_steps)

  # -- data ---------------------------------------------------------------------------------------

  def tokenize_one(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = self.tokenizer([caption])
    return ids[0], mask[0]

  def make_train_iterator(self, process_index: int, process_count: int):
    return train_data.make_iterator(self.config.data, self.config.train.batch_size,
                                    self.config.seed, process_index, process_count,
                                    tokenize=self.tokenize_one)

  def _tokens(self, batch: dict[str, jax.Array]) -> jax.Array:
    """``[B, N]`` int32 codes: pre-encoded, or encoded here by the frozen VQ encoder."""
    if "tokens" in batch:
      return batch["tokens"].reshape(batch["tokens"].shape[0], -1).astype(jnp.int32)
    codes = self.vq.encode(batch["image"])
    return codes.reshape(codes.shape[0], -1)

  # -- state --------------------------------------------------------------------------------------

  def init_state(self, key: jax.Array, batch: dict[str, jax.Array]) -> state_lib.TrainState:
    # XLA's CPU backend compiles every threefry draw slowly; one draw seeding an 'rbg' key makes
    # parameter init compile several times faster and stays deterministic.
    seed = jax.random.randint(key, (), 0, jnp.iinfo(jnp.int32).max)
    k_tr, k_te, k_null = jax.random.split(jax.random.key(seed, impl="rbg"), 3)
    b = batch["text_ids"].shape[0]
    x = jnp.zeros((b, self.num_tokens), jnp.int32)
    t = jnp.zeros((b,), jnp.int32)
    text = self.text_encoder.init(k_te, batch["text_ids"], batch["text_mask"])["params"]
    states = jnp.zeros((b, self.config.text.max_length, self.config.text.width), jnp.float32)
    tr = self.transformer.init(k_tr, x, t, states, batch["text_mask"])["params"]
    null = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("length", "text_embed"))(
        k_null, (self.config.text.max_length, self.config.text.width))
    params = {"transformer": tr, "text_encoder": text, "null_embedding": null}
    ema = params if self.config.train.ema_decay > 0 else None
    return state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
        ema_params=ema,
        extra={"loss_history": diffusion.LossHistory.create(self.process.num_timesteps)})

  # -- model --------------------------------------------------------------------------------------

  def text_states(self, params, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """``[B, L]`` ids and mask -> ``[B, L, D]`` text states."""
    return self.text_encoder.apply({"params": params["text_encoder"]}, ids, mask)

  def denoise_logits(self, params, x_t, t, states, mask, *, key=None) -> jax.Array:
    """``log p(x0 | x_t)`` as ``[B, N, K]``."""
    rngs = {"dropout": key} if key is not None else None
    return self.transformer.apply({"params": params["transformer"]}, x_t, t, states, mask,
                                  deterministic=key is None, rngs=rngs)

  def loss_fn(self, params, batch, key, history, step):
    k_drop, k_t, k_q, k_dropout = jax.random.split(key, 4)
    x0 = self._tokens(batch)
    mask = batch["text_mask"]
    states = self.text_states(params, batch["text_ids"], mask)
    null = jnp.broadcast_to(params["null_embedding"], states.shape)
    states, mask = text_lib.drop_captions(k_drop, states, mask, null,
                                          self.config.data.caption_drop_rate)
    importance = self.config.diffusion.get("importance_sampling", True)
    t, pt = diffusion.sample_timesteps(k_t, history, x0.shape[0], importance=importance)
    warmup = self.config.diffusion.get("layout_warmup_steps", 0)
    if warmup:
      # The first steps see only (nearly) fully masked inputs, where the only thing to learn is
      # where the caption puts each object; see the config's layout_warmup_steps.
      num_t = self.process.num_timesteps
      first = int(round(self.config.diffusion.get("layout_warmup_from", 0.9) * num_t))
      t_top, pt_top = diffusion.sample_top_timesteps(jax.random.fold_in(k_t, 1), x0.shape[0],
                                                     first, num_t)
      early = step < warmup
      t, pt = jnp.where(early, t_top, t), jnp.where(early, pt_top, pt)
    x_t = self.process.q_sample(k_q, x0, t)
    log_x0 = self.denoise_logits(params, x_t, t, states, mask,
                                 key=k_dropout if self.config.model.get("dropout", 0.0) else None)
    dcfg = self.config.diffusion
    loss, terms = diffusion.diffusion_loss(
        self.process, log_x0, x0, x_t, t, pt, aux_weight=dcfg.aux_weight,
        adaptive_aux_weight=dcfg.adaptive_aux, mask_weight=tuple(dcfg.mask_weights))
    return loss, (terms, t)

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

  # -- sampling -----------------------------------------------------------------------------------

  @functools.partial(jax.jit, static_argnums=(0, 5))
  def generate_tokens(self, params, ids, mask, key, settings: diffusion.SamplerConfig):
    """Tokens ``[B, N]`` for tokenized prompts ``[B, L]``, one jitted program for all steps."""
    cond = self.text_states(params, ids, mask)
    if diffusion.uses_guidance(settings.guidance_scale):
      null = jnp.broadcast_to(params["null_embedding"], cond.shape)
      states = jnp.concatenate([null, cond], axis=0)
      masks = jnp.concatenate([jnp.ones_like(mask), mask], axis=0)
    else:
      states, masks = cond, mask

    def denoise(x_t, t):  # t [B'] (the sampler's contract), so every argument is row-wise
      return row_blocks.in_row_shards(
          lambda x, t, s, m: self.denoise_logits(params, x, t, s, m), row_blocks.host_row_mesh(),
          None, x_t, t, states, masks)

    return diffusion.sample(denoise, key, self.process, batch_size=ids.shape[0],
                            num_tokens=self.num_tokens, **settings.kwargs())

  def generate(self, params, prompts: Sequence[str], key: jax.Array,
               settings: diffusion.SamplerConfig) -> np.ndarray:
    """uint8 images ``[B, H, W, 3]`` for ``prompts``."""
    ids, mask = self.tokenizer(list(prompts))
    params = row_blocks.replicate(params, row_blocks.host_row_mesh())  # no-op after load_trained
    tokens = self.generate_tokens(params, jnp.asarray(ids), jnp.asarray(mask), key, settings)
    # Through the host: the frozen autoencoder lives on one device, the tokens may span several.
    return np.asarray(self.vq.decode(np.asarray(tokens)))

  def write_previews(self, state, step: int, writer, directory: str) -> None:
    """A grid of samples for ``config.preview_prompts`` (process 0 writes it)."""
    prompts = list(self.config.get("preview_prompts", ["a large red circle"]))
    params = state.ema_params if state.ema_params is not None else state.params
    settings = diffusion.SamplerConfig(**self.config.sampling.to_dict())
    images = self.generate(params, prompts, jax.random.key(0), settings)
    grid = images_lib.image_grid(images)
    if jax.process_index() == 0:
      images_lib.save_png(os.path.join(directory, f"samples_{step:07d}.png"), grid, upscale=4)
      writer.write_image(step, "samples", grid)
      with open(os.path.join(directory, "prompts.json"), "w", encoding="utf-8") as f:
        json.dump(prompts, f)


def load_trained(workdir: str, step: int | None = None, use_ema: bool = True):
  """``(task, params, step)`` of a trained diffusion run, for sampling and evaluation."""
  from vqd_jax.training import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
  step = ckpt.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(
        f"No diffusion checkpoint in {os.path.abspath(workdir)}/checkpoints: train one first "
        "(python -m vqd_jax.train --config configs/diffusion.py:shapes --workdir ...), or use "
        "--pretrained for a diffusers checkpoint.")
  config = ml_collections.ConfigDict(ckpt.restore_config(step))
  if config.get("stage") != "diffusion":
    raise ValueError(f"{workdir} holds a {config.get('stage')!r} run, not a diffusion run.")
  task = DiffusionTask(config, workdir)
  b = 1
  example = {"text_ids": jnp.zeros((b, config.text.max_length), jnp.int32),
             "text_mask": jnp.ones((b, config.text.max_length), bool)}
  boxed = jax.eval_shape(task.init_state, jax.random.key(0), example)
  state, _ = ckpt.restore(step, on_first_local_device(boxed))
  ckpt.close()
  params = state.ema_params if (use_ema and state.ema_params is not None) else state.params
  # On the host CPU devices sampling splits rows over, if any.
  return task, row_blocks.replicate(params, row_blocks.host_row_mesh()), step
