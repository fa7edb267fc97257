"""Text-to-image sampling with a pretrained VQ-Diffusion checkpoint or a trained vqd_jax run.

  pipe = VQDiffusionPipeline.from_pretrained("/data/vq-diffusion-ithq")   # a LOCAL diffusers folder
  pipe = VQDiffusionPipeline.from_run("runs/quickstart/diffusion")         # or a vqd_jax run
  images = pipe(["teddy bear playing in the pool"], num_inference_steps=100, guidance_scale=5.0)
  # uint8 numpy [B, H, W, 3]

Prompt encoding (the run's ``Conditioner``), every denoising step (``TokenGenerator``) and decoding
run as ONE jitted program per (batch, settings); parameters are arguments of that program, not
constants baked into it, so changing weights does not recompile. With a diffusers checkpoint it
computes what diffusers' ``VQDiffusionPipeline`` does (CLIP states L2-normalised per token; the
learned null embedding, or CLIP("") normalised, for guidance; decode with ``get_codebook_entry`` ->
``post_quant_conv`` -> decoder -> ``/2 + 0.5``, clip, ``round(255 x)``), tested numerically in
tests/test_pipeline_vs_diffusers.py. Differences, on purpose:

* ``num_inference_steps < T`` calls the network at ``round(linspace(T-1, 0, n))`` and draws each
  step from the exact skip posterior q(x_s | x_t, x̂0) (diffusers runs t = n-1..0 from an
  all-[MASK] start). With n = T both are the same sampler.
* ``truncation_rate=1`` truncates nothing (diffusers still drops classes below ~6e-8).
* guidance is on for ``|s - 1| >= 1e-3`` (official code); diffusers only for s > 1.
* long prompts keep CLIP's end-of-text token in the last slot, as the official tokenizer does.
* inpainting / editing (``init_image``, ``inpaint_mask``, ``start_t``) and the purity sampler of
  Improved VQ-Diffusion (``purity_weight``), which the diffusers pipeline lacks.
* no float64 anywhere (diffusers runs its log_softmax in float64).

``python -m vqd_jax.bench sample`` measures the full pipeline against diffusers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax import build, diffusion, text
from vqd_jax.inference import paint as paint_lib
from vqd_jax.inference import settings as settings_lib
from vqd_jax.inference.generate import TokenGenerator
from vqd_jax.inference.loading import load_diffusion_run, refuse_coarse_stage
from vqd_jax.interop import diffusers_pipeline as layout
from vqd_jax.transformer import Text2ImageTransformer
from vqd_jax.transformer.fields import architecture
from vqd_jax.vqvae import tokens as vq_tokens


def _conditioner(c: layout.PipelineComponents) -> text.Conditioner:
  if c.text_kind == "clip":  # VQ-Diffusion runs CLIP without a padding mask
    return text.Conditioner(c.tokenizer, c.text_encoder, "clip", trainable=False, use_mask=False)
  return text.Conditioner(c.tokenizer, c.text_encoder, "word", trainable=True, use_mask=True)


class VQDiffusionPipeline:
  """Prompts -> images. ``params`` holds every weight as a pytree: ``transformer``, ``vqvae``,
  ``text_encoder`` and, when the checkpoint has one, ``null_embedding``.

  ``generator`` decides how the denoiser's rows run on this host (replace it before the first
  call to change that).
  """

  def __init__(self, components: layout.PipelineComponents):
    c = components
    self.components = components
    self.conditioner = _conditioner(c)
    self.vqvae = c.vq_model
    self.process = c.process
    self.generator = TokenGenerator.for_host(Text2ImageTransformer(**c.transformer_fields),
                                             c.process)
    self.checkpoint_step: int | None = None  # set by from_run
    self.embedders: dict[str, Any] = {}  # frozen encoders of embedding sources (use_embeddings)
    self.sampling_defaults: dict[str, Any] = {}  # a run's config.sampling, set by from_run
    params = {"transformer": c.transformer_params, "vqvae": c.vq_params,
              "text_encoder": c.text_params}
    if c.null_embedding is not None:
      params["null_embedding"] = c.null_embedding
    # Device arrays once, so no call re-transfers host (numpy) weights to the accelerator.
    self.params = self.generator.place(params)
    self._program = jax.jit(self._generate_impl, static_argnames=("settings", "use_text"))
    self._encode_prompt = jax.jit(lambda p, ids, mask: self.conditioner.encode(p, ids, mask).states)
    self._denoise = jax.jit(lambda p, x, t, cond: self.generator.denoise(p["transformer"], x, t,
                                                                         cond))
    self._decode = jax.jit(self.decode_tokens)
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
    return cls(layout.load_pipeline_components(path, dtype))

  @classmethod
  def from_run(cls, workdir: str, step: int | None = None, use_ema: bool = True,
               embedding_paths: dict[str, str] | None = None) -> "VQDiffusionPipeline":
    """The pipeline of a trained vqd_jax diffusion run (its conditioner and frozen autoencoder),
    e.g. for inpainting or ``save_pretrained`` (diffusers export). A run conditioned on embedding
    sources loads their encoders from the folders it was trained with, or ``embedding_paths``
    (``{name: folder}``) where they have moved."""
    run = load_diffusion_run(workdir, step=step, use_ema=use_ema)
    refuse_coarse_stage(run)
    cond = run.conditioner
    pipe = cls(layout.PipelineComponents(
        transformer_fields=architecture(run.generator.denoiser),
        transformer_params=run.params["transformer"], vq_model=run.autoencoder.model,
        vq_params=run.autoencoder.params, text_kind="clip" if cond.source == "clip" else "vqd_jax",
        text_encoder=cond.encoder, text_params=run.params["text_encoder"],
        tokenizer=cond.tokenizer, null_embedding=run.params.get("null_embedding"),
        process=run.generator.process))
    pipe.checkpoint_step = run.step
    pipe.sampling_defaults = dict(run.config.sampling.to_dict())
    if cond.embeddings:
      pipe.use_embeddings(cond, run.params["embeddings"], build.embedding_paths(workdir),
                          embedding_paths)
    return pipe

  def use_embeddings(self, conditioner: text.Conditioner, params: Any, paths: dict[str, str],
                     overrides: dict[str, str] | None = None) -> None:
    """Conditions on precomputed embedding sources too: ``conditioner`` (with ``embeddings``),
    their projection ``params`` and the encoder folders (``overrides`` replace ``paths``)."""
    paths = {**paths, **(overrides or {})}
    unknown = sorted(set(overrides or {}) - {s.name for s in conditioner.embeddings})
    if unknown:
      raise ValueError(f"embedding_paths names {unknown}, but the run conditions on "
                       f"{[s.name for s in conditioner.embeddings]}.")
    self.conditioner = conditioner
    self.params = {**self.params, "embeddings": self.generator.place(params)}
    self.embedders = text.frozen.load_source_encoders(paths)

  def save_pretrained(self, path: str | os.PathLike) -> list[str]:
    """Writes ``self.params`` in the layout it was loaded from (see ``vqd_jax.interop.export``);
    returns notes on what diffusers can load."""
    from vqd_jax.interop.export import export_components  # pylint: disable=import-outside-toplevel
    if self.conditioner.embeddings:
      raise ValueError("This run conditions on embedding sources "
                       f"({[s.name for s in self.conditioner.embeddings]}), which the diffusers "
                       "VQ-Diffusion layout cannot hold; sample it with vqd_jax instead.")
    return export_components(path, self.components, self.params)

  # -- sizes and parts -------------------------------------------------------------------------------

  @property
  def transformer(self) -> Text2ImageTransformer:
    return self.generator.denoiser

  @property
  def text_kind(self) -> str:
    return self.components.text_kind

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
    return self.conditioner.tokenize(prompts)

  def encode_prompt(self, prompts: str | Sequence[str]) -> jax.Array:
    """Text states ``[B, L, D]`` (CLIP: ``last_hidden_state`` L2-normalised per token)."""
    ids, mask = self.tokenize(prompts)
    return self._encode_prompt(self.params, jnp.asarray(ids), jnp.asarray(mask))

  def null_states(self, batch_size: int = 1) -> jax.Array:
    """``[B, L, D]`` unconditional states: the learned null embedding, else CLIP("") normalised."""
    return self.conditioner.null(self.params, batch_size).states

  def denoise_logits(self, x_t: Any, text_states: Any, t: Any, text_mask: Any = None) -> jax.Array:
    """log p(x0 | x_t) ``[B, N, K]`` (float32) for tokens ``[B, N]``, states ``[B, L, D]``, t.

    ``t`` is a scalar or ``[B]``. ``text_mask`` ``[B, L]`` only for exported vqd_jax text encoders
    (trained with a padding mask); CLIP checkpoints attend to every position, pads included.
    """
    x_t = jnp.asarray(x_t, jnp.int32)
    cond = text.Conditioning(jnp.asarray(text_states),
                             None if text_mask is None else jnp.asarray(text_mask, bool))
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), x_t.shape[:1])
    # Inputs may live on one device (another pipeline's states): place them like the weights.
    x_t, t, cond = self.generator.place((x_t, t, cond))
    return self._denoise(self.params, x_t, t, cond)

  def decode_tokens(self, params, tokens):
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
    """A pixel mask ``[H, W]`` / ``[B, H, W]`` (True or > 0.5 = regenerate) -> ``[B, N]`` bool;
    see ``vqd_jax.inference.settings.token_mask``."""
    return settings_lib.token_mask(mask, batch_size, self.token_grid,
                                   self.vqvae.downsample_factor)

  def sampler_config(self, num_inference_steps: int | None = None, guidance_scale: float = 5.0,
                     truncation_rate: float = 1.0, purity_weight: float | None = None,
                     start_t: int | None = None, start_from: str = "mask"
                     ) -> diffusion.SamplerConfig:
    """The ``SamplerConfig`` of these settings; see ``vqd_jax.inference.settings``."""
    return settings_lib.sampler_config(self.num_timesteps, num_inference_steps, guidance_scale,
                                       truncation_rate, purity_weight, start_t, start_from)

  # -- sampling -------------------------------------------------------------------------------------

  def _generate_impl(self, params, ids, mask, key, init_tokens, regenerate, paint, token_guidance,
                     embedded, *, settings: diffusion.SamplerConfig, use_text: bool = True):
    """``(tokens [B, N], uint8 images [B, H, W, 3])``: text encoding, sampling and decoding."""
    cond = self.conditioner.encode(params, ids, mask, embedded, use_text=use_text)
    if paint is not None and paint.shape[-1] < cond.states.shape[1]:  # no paint on the sources
      paint = jnp.pad(paint, ((0, 0), (0, 0), (0, cond.states.shape[1] - paint.shape[-1])))
    cond = cond.replace(paint=paint)
    null = None
    if diffusion.uses_guidance(settings.guidance_scale):
      null = self.conditioner.null(params, ids.shape[0])
    tokens = self.generator.generate_tokens(params["transformer"], cond, key, settings, null=null,
                                            init_tokens=init_tokens, inpaint_mask=regenerate,
                                            token_guidance=token_guidance)
    images = self.decode_tokens(params, tokens)
    return tokens, jnp.round(images * 255.0).astype(jnp.uint8)

  def generate(self, params, prompts: Sequence[str], key: jax.Array,
               settings: diffusion.SamplerConfig, init_image: Any = None,
               inpaint_mask: Any = None, paint: paint_lib.PaintSpec | None = None,
               paint_weight: float = paint_lib.DEFAULT_PAINT_WEIGHT,
               paint_outside: float = paint_lib.DEFAULT_PAINT_OUTSIDE,
               unpainted_guidance: float = paint_lib.DEFAULT_UNPAINTED_GUIDANCE,
               image: Any = None, use_text: bool = True) -> np.ndarray:
    """uint8 images ``[B, H, W, 3]`` for ``prompts`` with explicit params, key and settings.

    ``init_image`` (uint8 ``[H, W, 3]`` or ``[B, H, W, 3]``) keeps the image's tokens outside
    ``inpaint_mask`` (True = regenerate; default everything) and regenerates the rest from
    ``settings.start_t``. ``paint``, ``paint_weight``, ``paint_outside``,
    ``unpainted_guidance``, ``image`` and ``use_text`` as in ``__call__``.
    """
    return np.asarray(self._run(params, prompts, key, settings, init_image, inpaint_mask,
                                paint, paint_weight, paint_outside, unpainted_guidance,
                                image=image, use_text=use_text)[1])

  def paint_weights(self, prompts: str | Sequence[str], paint: paint_lib.PaintSpec,
                    weight: float = paint_lib.DEFAULT_PAINT_WEIGHT,
                    outside: float = paint_lib.DEFAULT_PAINT_OUTSIDE) -> np.ndarray:
    """The ``[B, N, L]`` paint-with-words map of ``paint`` (see ``vqd_jax.inference.paint``)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    return paint_lib.paint_weights(self.conditioner.tokenizer, prompts, paint, *self.token_grid,
                                   weight=weight, outside=outside)

  def generate_tokens(self, prompts: str | Sequence[str], seed: int = 0, **kwargs) -> np.ndarray:
    """Codes ``[B, N]`` int32; keyword arguments as in ``__call__``."""
    return np.asarray(self._call(prompts, seed, **kwargs)[0])

  def _run(self, params, prompts, key, settings, init_image, inpaint_mask, paint=None,
           paint_weight=paint_lib.DEFAULT_PAINT_WEIGHT,
           paint_outside=paint_lib.DEFAULT_PAINT_OUTSIDE,
           unpainted_guidance=paint_lib.DEFAULT_UNPAINTED_GUIDANCE, image=None, use_text=True):
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
    weights = scales = None
    if paint:
      paint = paint_lib.load_masks(paint, batch)  # read once for both maps
      weights = jnp.asarray(self.paint_weights(prompts, paint, paint_weight, paint_outside))
      scales = paint_lib.guidance_scales(paint, batch, *self.token_grid, settings.guidance_scale,
                                         unpainted_guidance)
      # Weight 0 is no paint at all, guidance included; a uniform map changes nothing.
      keep = (paint_weight > 0 and diffusion.uses_guidance(settings.guidance_scale)
              and np.any(scales != settings.guidance_scale))
      scales = jnp.asarray(scales) if keep else None
    embedded = self.embed(prompts if use_text else None, image, batch)
    return self._program(params, jnp.asarray(ids), jnp.asarray(mask), key, init_tokens, regenerate,
                         weights, scales, embedded, settings=settings, use_text=use_text)

  def embed(self, prompts: Sequence[str] | None, image: Any, batch: int) -> dict[str, np.ndarray]:
    """The embedding sources' entries for ``prompts`` and reference ``image`` (uint8
    ``[H, W, 3]`` or ``[B, H, W, 3]``, any size); sources without input read as their nulls."""
    if image is not None and "clip_image" not in self.embedders:
      raise ValueError("A reference image was given, but this model is not conditioned on a "
                       "clip_image source; train one with config.embeddings.clip_image.path.")
    if image is not None:
      image = np.asarray(image)
      image = image[None] if image.ndim == 3 else image
      if image.shape[0] not in (1, batch):
        raise ValueError(f"{image.shape[0]} reference images for {batch} prompts; give one "
                         "image or one per prompt.")
      image = np.broadcast_to(image, (batch,) + image.shape[1:])
    return text.frozen.embed_inputs(self.embedders, self.conditioner.embeddings,
                                    prompts=prompts, images=image)

  def _call(self, prompts, seed, num_inference_steps=None, guidance_scale=5.0, truncation_rate=1.0,
            purity_weight=None, init_image=None, inpaint_mask=None, start_t=None, paint=None,
            paint_weight=paint_lib.DEFAULT_PAINT_WEIGHT,
            paint_outside=paint_lib.DEFAULT_PAINT_OUTSIDE,
            unpainted_guidance=paint_lib.DEFAULT_UNPAINTED_GUIDANCE, image=None, use_text=True):
    settings = settings_lib.settings_for_call(
        self.num_timesteps, num_inference_steps, guidance_scale, truncation_rate, purity_weight,
        start_t, has_init_image=init_image is not None, has_mask=inpaint_mask is not None)
    key = seed if isinstance(seed, jax.Array) else jax.random.key(int(seed))
    return self._run(self.params, prompts, key, settings, init_image, inpaint_mask, paint,
                     paint_weight, paint_outside, unpainted_guidance, image=image,
                     use_text=use_text)

  def __call__(self, prompts: str | Sequence[str], num_inference_steps: int | None = None,
               guidance_scale: float = 5.0, truncation_rate: float = 1.0, seed: int = 0,
               purity_weight: float | None = None, init_image: Any = None,
               inpaint_mask: Any = None, start_t: int | None = None,
               paint: paint_lib.PaintSpec | None = None,
               paint_weight: float = paint_lib.DEFAULT_PAINT_WEIGHT,
               paint_outside: float = paint_lib.DEFAULT_PAINT_OUTSIDE,
               unpainted_guidance: float = paint_lib.DEFAULT_UNPAINTED_GUIDANCE,
               image: Any = None, use_text: bool = True) -> np.ndarray:
    """Generates uint8 images ``[B, H, W, 3]`` (numpy), one per prompt.

    Args:
      prompts: a prompt or a list of prompts.
      num_inference_steps: network calls; default T (100 for every released checkpoint, as in
        diffusers). Fewer use the exact skip posterior. Scaled down proportionally when starting
        at ``start_t``.
      guidance_scale: classifier-free guidance s (1 = off; diffusers' default 5).
      truncation_rate: keep the top-r probability mass of p̂(x0) per step (1 = off).
      seed: PRNG seed (or a ``jax.random`` key); same seed, same images.
      purity_weight: None for the posterior sampler; a weight w selects the purity-prior sampler
        of Improved VQ-Diffusion (its released code uses w = 1 with truncation 0.86).
      init_image: uint8 ``[H, W, 3]`` or ``[B, H, W, 3]`` at the model's resolution, for
        inpainting (with ``inpaint_mask``) or editing (with ``start_t``).
      inpaint_mask: ``[H, W]`` pixels (True / > 0.5 = regenerate; any token whose patch touches
        the region is regenerated) or ``[h, w]`` tokens.
      start_t: first timestep (0..T-1); default T-1 (the masked region starts all [MASK]).
      paint: paint-with-words, ``{phrase: mask}`` for every prompt or a list with one per prompt;
        a mask is a PNG path, PIL image or array of any size, white = painted, grey = partial
        (``vqd_jax.inference.paint``). The null rows of guidance are never painted.
      paint_weight: its strength w; the bias is w · f(t) · max(QKᵀ/√d) on the phrase's tokens,
        f(t) = log(1 + C̄_t / (1 - C̄_t)) for the masked fraction C̄_t
        (``vqd_jax.inference.generate.paint_bias``).
      paint_outside: the same bias, times minus this, on the phrase's tokens outside its mask
        (0: eDiff-I's rule, inside only).
      unpainted_guidance: the guidance scale where no mask is painted (1: none, so guidance
        cannot pull objects out of their masks; ``guidance_scale``: eDiff-I's uniform guidance;
        grey cells blend the two). Nearer ``guidance_scale`` keeps unpainted scenery guided.
      image: a reference image (uint8 ``[H, W, 3]`` or one per prompt ``[B, H, W, 3]``, any
        size) for a model conditioned on a ``clip_image`` source; None: that source's null.
      use_text: False conditions on the image alone (every text source reads as its null; the
        prompts then only set the batch size).
    """
    return np.asarray(self._call(prompts, seed, num_inference_steps, guidance_scale,
                                 truncation_rate, purity_weight, init_image, inpaint_mask,
                                 start_t, paint, paint_weight, paint_outside,
                                 unpainted_guidance, image=image, use_text=use_text)[1])
