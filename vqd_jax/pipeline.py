"""Pretrained VQ-Diffusion (diffusers layout, e.g. ``microsoft/vq-diffusion-ithq``) in JAX.

  pipe = VQDiffusionPipeline.from_pretrained("/data/vq-diffusion-ithq")    # a LOCAL folder
  images = pipe(["teddy bear playing in the pool"], num_inference_steps=100, guidance_scale=5.0)
  # uint8 numpy [B, 256, 256, 3]

Same computation as diffusers' ``VQDiffusionPipeline`` (CLIP states L2-normalised per token; the
learned null embedding, or CLIP("") normalised, for guidance; guidance -> renormalise ->
truncation -> clamp at -70 -> posterior -> Gumbel draw; decode with ``get_codebook_entry`` ->
``post_quant_conv`` -> decoder -> ``/2 + 0.5``, clip, ``round(255 x)``). Prompt encoding, every
denoising step and decoding run as ONE jitted program per (batch, steps, options); parameters are
arguments of that program, not constants baked into it, so changing weights does not recompile.

Differences from diffusers, on purpose (all numerically tested in tests/test_pipeline_vs_diffusers.py):

* ``num_inference_steps < T``: diffusers' ``set_timesteps(n)`` runs t = n-1 .. 0 from an all-[MASK]
  start, telling the network "t = n-1" while it sees 100% masks (reference notes §3.2 (a)). Here the
  n calls sit at ``round(linspace(T-1, 0, n))`` and each step draws from the exact multi-step
  posterior q(x_s | x_t, x̂0), so fewer steps approximate the same chain. With n = T both are the
  same sampler.
* ``truncation_rate=1`` truncates nothing here; diffusers still drops classes once its float32
  cumulative sum rounds to 1 (probabilities below ~6e-8, which a Gumbel draw practically never
  picks).
* guidance is on for ``|s - 1| >= 1e-3`` (official code); diffusers only for s > 1.
* long prompts keep CLIP's end-of-text token in the last slot, as the official tokenizer does.
* inpainting / editing (``init_image``, ``inpaint_mask``, ``start_t``) and the purity-prior sampler
  of Improved VQ-Diffusion (``purity_weight``), which the diffusers pipeline lacks.

Speed: the whole sampling loop is one ``lax.scan`` in one program, so XLA hoists what does not
depend on x_t or t out of it; when the batch runs as one block that includes the cross-attention
keys/values of the text states (computed once per sample, visible in the compiled HLO). On CPU the
transformer runs on small row blocks (``denoise_chunk_rows``), which keeps XLA's attention logits
in cache (2-2.5x faster per row at 4-8 rows; the per-step K/V recomputation this brings is < 1% of
a step), and with one XLA device per core (``vqd_jax.cpu_devices``, set up by the command lines)
the rows are split over the cores (``row_mesh``). No float64 anywhere (diffusers runs its
log_softmax in float64).
``python -m vqd_jax.bench sample --vs-diffusers`` measures the full pipeline against diffusers.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax import diffusion, row_blocks
from vqd_jax.diffusion.guidance import uses_guidance
from vqd_jax.interop import diffusers_pipeline as loading
from vqd_jax.transformer import Text2ImageTransformer
from vqd_jax.vqvae import tokens as vq_tokens


# The Text2ImageTransformer fields that describe a trained model (dtype and remat are run options).
TRANSFORMER_FIELDS = ("num_classes", "height", "width", "num_layers", "num_heads", "head_dim",
                      "cross_attention_dim", "num_embeds_ada_norm", "mlp_ratio", "dropout",
                      "mlp_type", "patch_size", "relative_position_bias",
                      "pooled_text_adaln")


@dataclasses.dataclass(frozen=True)
class _Options:
  """Static settings of one compiled sampling program."""
  sampler: diffusion.SamplerConfig
  guided: bool
  chunk_rows: int | None


class VQDiffusionPipeline:
  """Text-to-image sampling with a pretrained (or exported) VQ-Diffusion checkpoint.

  Build with :meth:`from_pretrained`. ``params`` holds every weight as a pytree
  (``transformer``, ``vqvae``, ``text_encoder`` and, when the checkpoint has one, ``null_embedding``).
  """

  def __init__(self, components: loading.PipelineComponents):
    c = components
    self.components = components
    self.transformer = Text2ImageTransformer(**c.transformer_fields)
    self.vqvae = c.vq_model
    self.text_encoder = c.text_encoder
    self.tokenizer = c.tokenizer
    self.text_kind = c.text_kind
    self.process = c.process
    # Several host CPU devices (vqd_jax.cpu_devices): the transformer's rows are split over them.
    self.row_mesh = row_blocks.host_row_mesh()
    # Rows per transformer block on CPU (see the module docstring); accelerators take the batch.
    # Measured on 2 cores: 2-row blocks on one device; 1-row blocks per core on a row mesh.
    self.denoise_chunk_rows: int | None = (None if jax.default_backend() != "cpu" else
                                           2 if self.row_mesh is None else 1)
    self.checkpoint_step: int | None = None  # set by from_run
    self.sampling_defaults: dict[str, Any] = {}  # a run's config.sampling, set by from_run
    self.params: dict[str, Any] = {"transformer": c.transformer_params, "vqvae": c.vq_params,
                                   "text_encoder": c.text_params}
    if c.null_embedding is not None:
      self.params["null_embedding"] = c.null_embedding
    # Device arrays once, so no call re-transfers host (numpy) weights to the accelerator.
    self.params = row_blocks.replicate(self.params, self.row_mesh)
    self._program = jax.jit(self._generate_impl, static_argnames=("options",))
    self._encode_prompt = jax.jit(self._text_states)
    self._denoise = jax.jit(self._denoise_rows, static_argnames=("chunk_rows",))
    self._decode = jax.jit(self._decode_impl)
    self._encode_image = jax.jit(self._encode_image_impl)

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, dtype: Any = jnp.float32
                      ) -> "VQDiffusionPipeline":
    """Loads a local diffusers VQ-Diffusion folder (or one exported by ``vqd_jax.convert``).

    Args:
      path: the pipeline folder (holding ``model_index.json``); nothing is downloaded.
      dtype: compute dtype of every network (weights stay float32); bfloat16 for speed on TPU.

    Raises:
      FileNotFoundError: naming the missing component folder or file.
      ValueError: when the components do not fit together.
    """
    return cls(loading.load_pipeline_components(path, dtype))

  @classmethod
  def from_run(cls, workdir: str, step: int | None = None, use_ema: bool = True
               ) -> "VQDiffusionPipeline":
    """The pipeline of a trained vqd_jax diffusion run (its word tokenizer and text encoder, its
    frozen VQ autoencoder), e.g. for inpainting or ``save_pretrained`` (diffusers export)."""
    import flax.linen as nn  # pylint: disable=import-outside-toplevel
    from vqd_jax.training import diffusion_task  # pylint: disable=import-outside-toplevel
    task, params, step = diffusion_task.load_trained(workdir, step=step, use_ema=use_ema)
    params = nn.meta.unbox(params)
    fields = {name: getattr(task.transformer, name) for name in TRANSFORMER_FIELDS}
    pipe = cls(loading.PipelineComponents(
        transformer_fields=fields, transformer_params=params["transformer"],
        vq_model=task.vq.task.model, vq_params=task.vq.params, text_kind="vqd_jax",
        text_encoder=task.text_encoder, text_params=params["text_encoder"],
        tokenizer=task.tokenizer, null_embedding=params.get("null_embedding"),
        process=task.process))
    pipe.checkpoint_step = step
    pipe.sampling_defaults = dict(task.config.sampling.to_dict())
    return pipe

  def save_pretrained(self, path: str | os.PathLike) -> list[str]:
    """Writes ``self.params`` in the layout it was loaded from (see ``vqd_jax.interop.export``);
    returns notes on what diffusers can load."""
    from vqd_jax.interop.export import export_components  # pylint: disable=import-outside-toplevel
    return export_components(path, self.components, self.params)

  # -- sizes ----------------------------------------------------------------------------------------

  @property
  def num_codes(self) -> int:
    """K, the number of VQ codes (the transformer has K + 1 token classes with [MASK])."""
    return self.process.num_classes

  @property
  def num_timesteps(self) -> int:
    return self.process.num_timesteps

  @property
  def token_grid(self) -> tuple[int, int]:
    return self.transformer.height, self.transformer.width

  @property
  def image_size(self) -> tuple[int, int]:
    f = self.vqvae.downsample_factor
    return self.transformer.height * f, self.transformer.width * f

  # -- networks -------------------------------------------------------------------------------------

  def tokenize(self, prompts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [B, L] int32, mask [B, L] bool)`` with the checkpoint's tokenizer."""
    return self.tokenizer([prompts] if isinstance(prompts, str) else list(prompts))

  def _text_states(self, params, ids, mask):
    if self.text_kind == "clip":  # VQ-Diffusion runs CLIP without a padding mask.
      return self.text_encoder.apply({"params": params["text_encoder"]}, ids, None, normalize=True)
    return self.text_encoder.apply({"params": params["text_encoder"]}, ids, mask)

  def encode_prompt(self, prompts: str | Sequence[str]) -> jax.Array:
    """Text states ``[B, L, D]`` (CLIP: ``last_hidden_state`` L2-normalised per token)."""
    ids, mask = self.tokenize(prompts)
    return self._encode_prompt(self.params, jnp.asarray(ids), jnp.asarray(mask))

  def _null_states(self, params, batch_size: int):
    """``(states [B, L, D], mask [B, L])`` of the unconditional branch of guidance."""
    if "null_embedding" in params:
      null = params["null_embedding"]
      return jnp.broadcast_to(null, (batch_size,) + null.shape), jnp.ones(
          (batch_size, null.shape[0]), bool)
    if self.text_kind != "clip":
      raise ValueError("Classifier-free guidance needs a null embedding, and this checkpoint has "
                       "none; sample with guidance_scale=1.")
    ids, mask = self.tokenize([""] * batch_size)
    return self._text_states(params, jnp.asarray(ids), jnp.asarray(mask)), jnp.asarray(mask)

  def null_states(self, batch_size: int = 1) -> jax.Array:
    """``[B, L, D]`` unconditional states: the learned null embedding, else CLIP("") normalised."""
    return self._null_states(self.params, batch_size)[0]

  def _denoise_impl(self, params, x_t, text_states, t, text_mask=None):
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), x_t.shape[:1])
    return self.transformer.apply({"params": params["transformer"]}, x_t, t, text_states,
                                  text_mask)

  def _denoise_rows(self, params, x_t, text_states, t, text_mask=None, *, chunk_rows=None):
    """``_denoise_impl`` over the rows in shards (several CPU devices) and chunks."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), x_t.shape[:1])
    return row_blocks.in_row_shards(
        lambda x, s, t, m: self._denoise_impl(params, x, s, t, m), self.row_mesh, chunk_rows,
        x_t, text_states, t, text_mask)

  def denoise_logits(self, x_t: Any, text_states: Any, t: Any, text_mask: Any = None) -> jax.Array:
    """log p(x0 | x_t) ``[B, N, K]`` (float32) for tokens ``[B, N]``, states ``[B, L, D]``, t.

    ``t`` is a scalar or ``[B]``. ``text_mask`` ``[B, L]`` only for exported vqd_jax text encoders
    (trained with a padding mask); CLIP checkpoints attend to every position, pads included.
    """
    args = (jnp.asarray(x_t, jnp.int32), jnp.asarray(text_states), jnp.asarray(t, jnp.int32),
            None if text_mask is None else jnp.asarray(text_mask, bool))
    if self.row_mesh is not None:  # inputs may live on one device (another pipeline's states)
      args = row_blocks.replicate(args, self.row_mesh)
    return self._denoise(self.params, *args, chunk_rows=self.denoise_chunk_rows)

  def _decode_impl(self, params, tokens):
    """Tokens ``[B, N]`` -> float images ``[B, H, W, 3]`` in [0, 1] (diffusers' decode)."""
    grid = tokens.reshape((tokens.shape[0],) + self.token_grid)
    images = self.vqvae.apply({"params": params["vqvae"]}, grid, method="decode_indices")
    return jnp.clip(images.astype(jnp.float32) / 2 + 0.5, 0.0, 1.0)

  def decode(self, tokens: Any) -> jax.Array:
    """Codes ``[B, N]`` (raster order) -> float32 images ``[B, H, W, 3]`` in [0, 1]."""
    return self._decode(self.params, jnp.asarray(tokens, jnp.int32))

  def _encode_image_impl(self, params, images):
    codes = vq_tokens.encode_tokens(self.vqvae, {"params": params["vqvae"]}, images)
    return codes.reshape(codes.shape[0], -1)

  def encode_image(self, images: Any) -> jax.Array:
    """uint8 images ``[B, H, W, 3]`` (or ``[H, W, 3]``) -> codes ``[B, N]`` with the VQ encoder."""
    images = np.asarray(images)
    images = images[None] if images.ndim == 3 else images
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:3] != self.image_size:
      raise ValueError(f"init_image must be uint8 [B, H, W, 3] (or [H, W, 3]) with H, W = "
                       f"{self.image_size}, got {images.dtype} {images.shape}; resize it first.")
    return self._encode_image(self.params, jnp.asarray(images))

  def token_mask(self, mask: Any, batch_size: int = 1) -> np.ndarray:
    """A pixel mask ``[H, W]`` / ``[B, H, W]`` (True or > 0.5 = regenerate) -> ``[B, N]`` bool.

    A token is regenerated when any pixel of its ``f x f`` patch is masked. A mask already at the
    token grid (``[h, w]`` / ``[B, h, w]``) is used as it is.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] in (1, 3, 4) and mask.shape[:2] == self.image_size:
      mask = mask[..., 0]  # a greyscale or RGB(A) image file read as [H, W, C]
    if mask.dtype != bool:
      mask = mask > (127 if mask.dtype == np.uint8 else 0.5)
    mask = mask[None] if mask.ndim == 2 else mask
    (h, w), (big_h, big_w) = self.token_grid, self.image_size
    if mask.ndim != 3 or mask.shape[1:] not in ((h, w), (big_h, big_w)):
      raise ValueError(f"inpaint_mask must be [H, W] = {(big_h, big_w)} pixels or [h, w] = {(h, w)} "
                       f"tokens (optionally with a batch axis), got shape {mask.shape}.")
    if mask.shape[1:] == (big_h, big_w):
      f = self.vqvae.downsample_factor
      mask = mask.reshape(mask.shape[0], h, f, w, f).any(axis=(2, 4))
    mask = np.broadcast_to(mask, (batch_size, h, w)) if mask.shape[0] == 1 else mask
    if mask.shape[0] != batch_size:
      raise ValueError(f"inpaint_mask has {mask.shape[0]} masks for {batch_size} images.")
    return mask.reshape(batch_size, h * w)

  # -- sampling -------------------------------------------------------------------------------------

  def _generate_impl(self, params, ids, mask, key, init_tokens, regenerate, *, options: _Options):
    """``(tokens [B, N], uint8 images [B, H, W, 3])``: text encoding, sampling and decoding."""
    batch = ids.shape[0]
    states = self._text_states(params, ids, mask)
    text_mask = mask if self.text_kind != "clip" else None
    if options.guided:  # rows [:B] unconditional, rows [B:] the prompts (sampler contract)
      null, null_mask = self._null_states(params, batch)
      states = jnp.concatenate([null.astype(states.dtype), states])
      text_mask = None if text_mask is None else jnp.concatenate([null_mask, text_mask])

    def denoise(x_t, t):
      return self._denoise_rows(params, x_t, states, t, text_mask, chunk_rows=options.chunk_rows)

    tokens = diffusion.sample(denoise, key, self.process, batch_size=batch,
                              num_tokens=self.transformer.num_tokens, init_tokens=init_tokens,
                              inpaint_mask=regenerate, **options.sampler.kwargs())
    images = self._decode_impl(params, tokens)
    return tokens, jnp.round(images * 255.0).astype(jnp.uint8)

  def sampler_config(self, num_inference_steps: int | None = None, guidance_scale: float = 5.0,
                     truncation_rate: float = 1.0, purity_weight: float | None = None,
                     start_t: int | None = None, start_from: str = "mask"
                     ) -> diffusion.SamplerConfig:
    """The ``SamplerConfig`` of these settings; steps scale with ``start_t`` (None: one per step).

    Starting at ``start_t`` keeps the same step density: ``num_inference_steps`` calls over the
    whole chain become ``ceil(num_inference_steps · (start_t + 1) / T)`` calls from ``start_t``.
    """
    t_count = self.num_timesteps
    steps = t_count if num_inference_steps is None else int(num_inference_steps)
    if steps < 1 or (steps > t_count and purity_weight is None):
      raise ValueError(f"num_inference_steps must be in [1, T = {t_count}] for the posterior "
                       f"sampler (the purity sampler may use more), got {steps}.")
    if start_t is not None:
      if not 0 <= int(start_t) < t_count:
        raise ValueError(f"start_t must lie in [0, {t_count - 1}], got {start_t}.")
      steps = max(1, math.ceil(steps * (int(start_t) + 1) / t_count))
    return diffusion.SamplerConfig(
        num_steps=steps, truncation_rate=float(truncation_rate),
        guidance_scale=float(guidance_scale),
        purity_weight=None if purity_weight is None else float(purity_weight),
        start_t=None if start_t is None else int(start_t), start_from=start_from)

  def generate(self, params, prompts: Sequence[str], key: jax.Array,
               settings: diffusion.SamplerConfig, init_image: Any = None,
               inpaint_mask: Any = None) -> np.ndarray:
    """uint8 images ``[B, H, W, 3]``: the ``task.generate`` signature ``vqd_jax.sample`` uses.

    ``init_image`` (uint8 ``[H, W, 3]`` or ``[B, H, W, 3]``) keeps the image's tokens outside
    ``inpaint_mask`` (True = regenerate; default everything) and regenerates the rest from
    ``settings.start_t``.
    """
    return np.asarray(self._run(params, prompts, key, settings, init_image, inpaint_mask)[1])

  def generate_tokens(self, prompts: str | Sequence[str], seed: int = 0, **kwargs) -> np.ndarray:
    """Codes ``[B, N]`` int32; keyword arguments as in ``__call__``."""
    return np.asarray(self._call(prompts, seed, **kwargs)[0])

  def _run(self, params, prompts, key, settings, init_image, inpaint_mask):
    ids, mask = self.tokenize(prompts)
    batch = ids.shape[0]
    if batch == 0:
      raise ValueError("No prompts given.")
    init_tokens = regenerate = None
    if init_image is not None:
      init_tokens = self.encode_image(init_image)
      if init_tokens.shape[0] not in (1, batch):
        raise ValueError(f"{init_tokens.shape[0]} init images for {batch} prompts; give one image "
                         "or one per prompt.")
      init_tokens = jnp.broadcast_to(init_tokens, (batch, init_tokens.shape[1]))
      if inpaint_mask is not None:
        regenerate = jnp.asarray(self.token_mask(inpaint_mask, batch))
    elif inpaint_mask is not None:
      raise ValueError("inpaint_mask needs init_image: the image whose unmasked part is kept.")
    options = _Options(sampler=settings, guided=uses_guidance(settings.guidance_scale),
                       chunk_rows=self.denoise_chunk_rows)
    return self._program(params, jnp.asarray(ids), jnp.asarray(mask), key, init_tokens, regenerate,
                         options=options)

  def _call(self, prompts, seed, num_inference_steps=None, guidance_scale=5.0, truncation_rate=1.0,
            purity_weight=None, init_image=None, inpaint_mask=None, start_t=None):
    # Without a mask the whole image is regenerated from a noised copy of it (editing); with one,
    # the masked tokens restart from [MASK] (inpainting).
    start_from = "noise" if init_image is not None and inpaint_mask is None else "mask"
    if init_image is not None and start_t is None and inpaint_mask is None:
      raise ValueError("Editing an init_image without inpaint_mask needs start_t (how much noise "
                       "to add, 0..T-1); or pass inpaint_mask to regenerate part of it.")
    settings = self.sampler_config(num_inference_steps, guidance_scale, truncation_rate,
                                   purity_weight, start_t, start_from)
    key = seed if isinstance(seed, jax.Array) else jax.random.key(int(seed))
    return self._run(self.params, prompts, key, settings, init_image, inpaint_mask)

  def __call__(self, prompts: str | Sequence[str], num_inference_steps: int | None = None,
               guidance_scale: float = 5.0, truncation_rate: float = 1.0, seed: int = 0,
               purity_weight: float | None = None, init_image: Any = None,
               inpaint_mask: Any = None, start_t: int | None = None) -> np.ndarray:
    """Generates uint8 images ``[B, H, W, 3]`` (numpy), one per prompt.

    Args:
      prompts: a prompt or a list of prompts.
      num_inference_steps: network calls; default T (100 for every released checkpoint, as in
        diffusers). Fewer use the exact skip posterior (see the module docstring). Scaled down
        proportionally when starting at ``start_t``.
      guidance_scale: classifier-free guidance s (1 = off; diffusers' default 5).
      truncation_rate: keep the top-r probability mass of p̂(x0) per step (1 = off).
      seed: PRNG seed (or a ``jax.random`` key); same seed, same images.
      purity_weight: None for the posterior sampler; a weight w selects the purity-prior sampler
        of Improved VQ-Diffusion (its README uses w = 1 with truncation 0.86).
      init_image: uint8 ``[H, W, 3]`` or ``[B, H, W, 3]`` at the model's resolution, for
        inpainting (with ``inpaint_mask``) or editing (with ``start_t``).
      inpaint_mask: ``[H, W]`` pixels (True / > 0.5 = regenerate; any token whose patch touches
        the region is regenerated) or ``[h, w]`` tokens.
      start_t: first timestep (0..T-1); default T-1 (the masked region starts all [MASK]).
    """
    return np.asarray(self._call(prompts, seed, num_inference_steps, guidance_scale,
                                 truncation_rate, purity_weight, init_image, inpaint_mask,
                                 start_t)[1])
