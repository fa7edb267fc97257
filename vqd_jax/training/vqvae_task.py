"""The autoencoder stage: trains :class:`vqd_jax.vqvae.VQAutoencoder` on images.

Loss (taming VQGAN, every optional part off by default):
``recon(x, x̂) + perceptual_weight * LPIPS + gan_weight * λ_adaptive * (-D(x̂))
  + beta * |z - sg(e)|^2 + |sg(z) - e|^2`` (the last term only without the EMA codebook).

Schedule: ``loss.warmup_steps`` plain-autoencoder steps (quantizer bypassed), then the codebook is
initialised from encoder outputs and VQ training starts; dead codes are restarted every step; the
discriminator joins at ``loss.gan_start``. State: ``params`` (autoencoder), ``extra["vq_stats"]``
(quantizer statistics), ``extra["disc"]`` (discriminator params and optimizer state, with a GAN) and
``extra["lpips"]`` (frozen perceptual weights, with a perceptual loss).

Config (see ``configs/vqvae.py``): ``model`` (VQAutoencoder fields + dtype), ``loss`` (recon 'l1'|'l2',
commitment_beta, codebook_ema, codebook_ema_decay, usage_decay, dead_code_threshold, warmup_steps,
kmeans_iterations, gan_weight (0 = off), gan_start, disc {base_channels, num_layers, norm_num_groups,
lr, b1, b2}, perceptual_weight (0 = off), lpips_weights (comma-separated local files)), ``optim``
(:func:`vqd_jax.training.optim.make_optimizer`), ``train`` (num_steps, batch_size, ema_decay) and
``data``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vqd_jax import build
from vqd_jax import images as images_lib
from vqd_jax import vqvae
from vqd_jax.interop import lpips as lpips_io
from vqd_jax.data import configured as data_config
from vqd_jax.training import optim as optim_lib
from vqd_jax.training import state as state_lib

class VQVAETask:
  """Implements :class:`vqd_jax.training.state.Task` for the VQ autoencoder (see module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str = ""):
    self.config = config
    self.workdir = workdir
    self.model = build.autoencoder(config)
    loss = config.loss
    self.tx = optim_lib.make_optimizer(config.optim, config.train.num_steps)
    self.codebook_settings = vqvae.CodebookSettings(
        warmup_steps=int(loss.warmup_steps), kmeans_iterations=int(loss.kmeans_iterations),
        use_ema=bool(loss.codebook_ema), dead_code_threshold=float(loss.dead_code_threshold))
    self.use_gan = float(loss.gan_weight) > 0
    if self.use_gan:
      d = loss.disc
      self.disc = vqvae.PatchDiscriminator(base_channels=d.base_channels, num_layers=d.num_layers,
                                           norm_num_groups=d.norm_num_groups)
      self.disc_tx = optax.adam(d.lr, b1=d.b1, b2=d.b2)
    paths = [p for p in str(loss.lpips_weights or "").split(",") if p.strip()]
    self.use_lpips = float(loss.perceptual_weight) > 0
    if self.use_lpips and not paths:
      raise ValueError("loss.perceptual_weight > 0 needs loss.lpips_weights: local LPIPS weight "
                       "file(s), comma-separated (VGG16 trunk + LPIPS heads; nothing is downloaded). "
                       "Set perceptual_weight=0 to train without the perceptual loss.")
    self._lpips_paths = [p.strip() for p in paths]
    # Read in init_state, not here: building the task for token encode/decode needs no files.
    self._lpips_params = None
    self.lpips = vqvae.LPIPS()
    self._preview_images = None
    self._reconstruct_jit = jax.jit(self.reconstruct)

  # -- shape facts --------------------------------------------------------------------------------

  @property
  def num_codes(self) -> int:
    return int(self.model.num_vq_embeddings)

  @property
  def downsample_factor(self) -> int:
    return self.model.downsample_factor

  @property
  def num_tokens(self) -> int:
    """Codes per image (what ``bench train`` counts as tokens)."""
    return (self.config.data.image_size // self.downsample_factor) ** 2

  def make_train_iterator(self, process_index: int, process_count: int):
    return data_config.make_iterator(self.config.data, self.config.train.batch_size,
                                    self.config.seed, process_index, process_count)

  # -- state --------------------------------------------------------------------------------------

  def init_state(self, key: jax.Array, batch: dict[str, Any]) -> state_lib.TrainState:
    # Flax derives one key per parameter by threefry hashing, and XLA's CPU backend compiles each
    # threefry slowly (~40 s for a tiny autoencoder). Initialising from an 'rbg' key (one threefry
    # draw to seed it) compiles 4x faster and is just as deterministic.
    seed = jax.random.randint(key, (), 0, jnp.iinfo(jnp.int32).max)
    k_model, k_disc = jax.random.split(jax.random.key(seed, impl="rbg"))
    images = vqvae.images_to_float(jnp.asarray(batch["image"]))
    variables = self.model.init(k_model, images, train=True)
    params = variables["params"]
    extra: dict[str, Any] = {"vq_stats": variables[vqvae.STATS_COLLECTION]}
    if self.use_gan:
      disc_params = self.disc.init(k_disc, images)["params"]
      extra["disc"] = {"params": disc_params, "opt_state": self.disc_tx.init(disc_params)}
    if self.use_lpips:
      if self._lpips_params is None:
        self._lpips_params = lpips_io.load_lpips_params(*self._lpips_paths)
      extra["lpips"] = self._lpips_params
    ema = params if self.config.train.ema_decay > 0 else None
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=self.tx.init(params), ema_params=ema, extra=extra)

  # -- training -----------------------------------------------------------------------------------

  def _nll(self, recon, images, lpips_params):
    """Reconstruction + perceptual terms (scalars) of ``recon`` vs ``images``."""
    loss = self.config.loss
    rec = vqvae.reconstruction_loss(recon, images, loss.recon)
    perceptual = jnp.zeros(())
    if self.use_lpips:
      perceptual = jnp.mean(self.lpips.apply({"params": lpips_params}, recon, images))
    return rec + loss.perceptual_weight * perceptual, (rec, perceptual)

  def _loss_fn(self, params, extra, images, step):
    loss = self.config.loss
    use_q = step >= self.codebook_settings.warmup_steps
    (recon, aux), new_vars = self.model.apply(
        {"params": params, vqvae.STATS_COLLECTION: extra["vq_stats"]}, images, train=True,
        use_quantizer=use_q, return_features=self.use_gan, mutable=[vqvae.STATS_COLLECTION])
    lpips_params = extra.get("lpips")
    nll, (rec, perceptual) = self._nll(recon, images, lpips_params)
    vq = loss.commitment_beta * aux["commitment_loss"]
    if not self.codebook_settings.use_ema:
      vq = vq + aux["codebook_loss"]
    total = nll + vq
    metrics = {"recon_loss": rec, "commitment_loss": aux["commitment_loss"],
               "perplexity": aux["perplexity"],
               "codes_in_batch": jnp.sum(aux["counts"] > 0).astype(jnp.float32)}
    if self.use_lpips:
      metrics["perceptual_loss"] = perceptual
    if self.use_gan:
      g_loss, weight = self._generator_term(params, extra, recon, aux["features"], images, step)
      total = total + weight * g_loss
      metrics.update(g_loss=g_loss, gan_weight=weight)
    metrics["loss"] = total
    return total, (recon, aux, new_vars[vqvae.STATS_COLLECTION], metrics)

  def _generator_term(self, params, extra, recon, features, images, step):
    """``(-mean D(x̂), weight)`` with taming's adaptive weight (0 before ``gan_start``)."""
    loss = self.config.loss
    disc_params = extra["disc"]["params"]

    def g_of(r):
      return vqvae.generator_loss(self.disc.apply({"params": disc_params}, r))

    fixed = jax.lax.stop_gradient(recon)
    # conv_out sees patches (p > 1): move the pixel-space gradients there (a pure permutation).
    nll_grad = self.model.to_patches(
        jax.grad(lambda r: self._nll(r, images, extra.get("lpips"))[0])(fixed))
    g_grad = self.model.to_patches(jax.grad(g_of)(fixed))
    kernel = jax.lax.stop_gradient(params["decoder"]["conv_out"]["kernel"])
    feats = jax.lax.stop_gradient(features)
    adaptive = vqvae.adaptive_gan_weight(vqvae.last_layer_grad_norm(feats, kernel, nll_grad),
                                         vqvae.last_layer_grad_norm(feats, kernel, g_grad))
    weight = adaptive * vqvae.adopt_weight(loss.gan_weight, step, loss.gan_start)
    return g_of(recon), weight

  def _disc_update(self, disc, images, recon, step):
    def d_loss_fn(p):
      real = self.disc.apply({"params": p}, images)
      fake = self.disc.apply({"params": p}, jax.lax.stop_gradient(recon))
      return vqvae.hinge_discriminator_loss(real, fake)

    d_loss, grads = jax.value_and_grad(d_loss_fn)(disc["params"])
    on = (step >= self.config.loss.gan_start).astype(jnp.float32)
    grads = jax.tree.map(lambda g: g * on, grads)  # no discriminator updates before gan_start
    updates, opt_state = self.disc_tx.update(grads, disc["opt_state"], disc["params"])
    return {"params": optax.apply_updates(disc["params"], updates), "opt_state": opt_state}, d_loss

  def train_step(self, state: state_lib.TrainState, batch: dict[str, Any], key: jax.Array
                 ) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    images = vqvae.images_to_float(batch["image"])
    step = state.step
    grads, (recon, aux, stats, metrics) = jax.grad(self._loss_fn, has_aux=True)(
        state.params, state.extra, images, step)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    codebook, quantize_stats, upkeep = vqvae.maintain_codebook(
        key, step, params["quantize"]["embedding"], stats["quantize"], aux["flat_latents"],
        aux["squared_error"], self.codebook_settings)
    params = dict(params, quantize=dict(params["quantize"], embedding=codebook))
    extra = dict(state.extra, vq_stats=dict(stats, quantize=quantize_stats))
    metrics = dict(metrics, **upkeep, grad_norm=optax.global_norm(grads))
    if self.use_gan:
      extra["disc"], metrics["d_loss"] = self._disc_update(state.extra["disc"], images, recon, step)

    ema = state.ema_params
    if ema is not None:
      # Averaging starts with VQ training: the warm-up weights live in another regime.
      decay = state_lib.ema_decay_at(step, self.config.train.ema_decay,
                                     self.codebook_settings.warmup_steps)
      ema = state_lib.ema_update(ema, params, decay)
      # A code average across restarts is meaningless: the EMA model uses the live codebook.
      ema = dict(ema, quantize=dict(ema["quantize"], embedding=codebook))
    return state.replace(step=step + 1, params=params, opt_state=opt_state, ema_params=ema,
                         extra=extra), metrics

  # -- inference (what the diffusion stage and sampling call) ---------------------------------------

  def reconstruct(self, params, extra, images: jax.Array) -> jax.Array:
    """uint8 ``[B, H, W, 3]`` -> uint8 reconstructions."""
    del extra
    return vqvae.reconstruct(self.model, {"params": params}, images)

  def encode_tokens(self, params, extra, images: jax.Array) -> jax.Array:
    """uint8 ``[B, H, W, 3]`` -> int32 ``[B, H/f, W/f]``."""
    del extra
    return vqvae.encode_tokens(self.model, {"params": params}, images)

  def decode_tokens(self, params, extra, tokens: jax.Array) -> jax.Array:
    """int ``[B, h, w]`` -> uint8 ``[B, h*f, w*f, 3]``."""
    del extra
    return vqvae.decode_tokens(self.model, {"params": params}, tokens)

  def preview_images(self, count: int = 16) -> np.ndarray:
    """The first ``count`` training images (unshuffled), uint8, cached."""
    if self._preview_images is None:
      from vqd_jax import data as data_lib  # pylint: disable=import-outside-toplevel
      it = data_lib.make_pipeline(data_config.make_source(self.config.data), batch_size=count,
                                  image_size=self.config.data.image_size, seed=0, shuffle=False)
      self._preview_images = np.asarray(next(it)["image"])
    return self._preview_images

  def write_previews(self, state, step: int, writer, directory: str) -> None:
    """Originals (top rows) above their reconstructions (bottom rows), as one PNG grid."""
    params = state.ema_params if state.ema_params is not None else state.params
    originals = self.preview_images()
    recon = np.asarray(self._reconstruct_jit(params, None, jnp.asarray(originals)))
    cols = int(np.ceil(np.sqrt(len(originals))))
    grid = images_lib.image_grid(np.concatenate([originals, recon]), cols=cols)
    if jax.process_index() == 0:
      images_lib.save_png(os.path.join(directory, f"recon_{step:07d}.png"), grid, upscale=4)
      writer.write_image(step, "reconstructions", grid)


def save_untrained(workdir: str, config: ml_collections.ConfigDict, seed: int = 0) -> None:
  """Writes a freshly initialised autoencoder run (step 0) to ``workdir``.

  Benchmarks and tests use it where only shapes and cost matter, through the same loading path as a
  trained run.
  """
  import json  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from vqd_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  task = VQVAETask(config, workdir)
  example = {"image": jnp.zeros((1, config.data.image_size, config.data.image_size, 3), jnp.uint8)}
  state = nn.meta.unbox(jax.jit(task.init_state)(jax.random.key(seed), example))
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
  ckpt.save(0, state, {}, json.loads(config.to_json_best_effort()), force=True)
  ckpt.close()
