"""``generate_tokens``: the one path from conditioning to image tokens for the diffusion denoiser.

Training previews, ``VQDiffusionPipeline`` and ``python -m vqd_jax.sample`` all call it inside
their own ``jax.jit``; the whole reverse chain is one ``lax.scan`` (``vqd_jax.diffusion.sample``).
Classifier-free guidance runs the denoiser once per step on the ``[null, prompts]`` rows
(``stack_rows``); truncation, purity, fast steps and inpainting are ``SamplerConfig`` settings.
An ensemble of expert denoisers (``diffusion.ExpertParams``) runs one expert per step, chosen
from the step's t inside the scan.

On CPU the denoiser runs on small row blocks (its attention logits then stay in cache: 2-2.5x
faster per row at 4-8 rows on 2 cores), split over the host's devices when there are several
(``vqd_jax.cpu_devices``); accelerators take the whole batch in one block.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from vqd_jax import diffusion, row_blocks
from vqd_jax.text.conditioner import Conditioning, stack_rows
from vqd_jax.transformer import Text2ImageTransformer


def default_chunk_rows(row_mesh: Mesh | None) -> int | None:
  """Rows per denoiser block: measured best on 2 CPU cores; None (one block) on accelerators."""
  if jax.default_backend() != "cpu":
    return None
  return 2 if row_mesh is None else 1


def paint_bias(process: diffusion.MaskAndReplace, paint: jax.Array, t: jax.Array) -> jax.Array:
  """The denoiser's ``scaled_cross_attention_bias`` ``[B, 1, N, L]`` for paint weights
  ``[B, N, L]`` at timesteps t ``[B]``: ``paint · f(t)``, f(t) = log(1 + C̄_t / (1 - C̄_t)).

  C̄_t is the fraction of tokens masked at t, so f is the masking analogue of eDiff-I's
  log(1 + σ) with σ² read as the odds that a token is masked: large while the layout forms (2.3
  at C̄ = 0.9, 11.5 at the all-masked start of the released schedule), 0.69 at half masked and
  fading to 0 at t = 0. It placed objects better than f = C̄_t (docs/experiments.md)."""
  odds_term = -process.log_cum_unmasked[t + 1]  # log(1 + C̄/(1 - C̄)) = -log(1 - C̄)
  return (paint * odds_term[:, None, None])[:, None]


def per_token_guidance(rows: jax.Array, scales: jax.Array, guidance_scale: float) -> jax.Array:
  """Guidance ``[null, cond]`` rows ``[2B, N, K]`` rewritten so that the sampler's guidance at
  ``guidance_scale`` s yields ``lu + g·(lc - lu)`` with a scale g of ``scales`` ``[B, N]`` per token.

  Only the null rows move, to ``lc - (g - 1)/(s - 1)·(lc - lu)``: then ``lu' + s·(lc - lu')`` is
  exactly ``lu + g·(lc - lu)``, so the diffusion core keeps its one scalar scale.
  """
  half = rows.shape[0] // 2
  uncond, cond = rows[:half], rows[half:]
  ratio = ((scales - 1.0) / (guidance_scale - 1.0))[..., None].astype(rows.dtype)
  return jnp.concatenate([cond - ratio * (cond - uncond), cond])


@dataclasses.dataclass(frozen=True)
class TokenGenerator:
  """A denoiser and its forward process, with how its calls are laid out on the host.

  Attributes:
    denoiser: the network, ``(x_t [B, N], t [B], states, mask, global_cond) -> [B, N, K]``.
    process: the mask-and-replace process it was trained with.
    row_mesh: several host CPU devices to split the rows over, or None.
    chunk_rows: rows per denoiser block inside each device, or None for one block.
  """
  denoiser: Text2ImageTransformer
  process: diffusion.MaskAndReplace
  row_mesh: Mesh | None = None
  chunk_rows: int | None = None

  @classmethod
  def for_host(cls, denoiser: Text2ImageTransformer, process: diffusion.MaskAndReplace
               ) -> "TokenGenerator":
    """The layout measured fastest for this host (see the module docstring)."""
    mesh = row_blocks.host_row_mesh()
    return cls(denoiser, process, mesh, default_chunk_rows(mesh))

  @property
  def num_tokens(self) -> int:
    return self.denoiser.num_tokens

  def place(self, params: Any) -> Any:
    """``params`` on the devices the denoiser's rows run on (once, not per call)."""
    return row_blocks.replicate(params, self.row_mesh)

  def denoise(self, params: Any, x_t: jax.Array, t: jax.Array, cond: Conditioning) -> jax.Array:
    """log p(x0 | x_t) ``[B, N, K]`` for tokens ``[B, N]``, t ``[B]`` and ``cond`` rows ``[B]``
    (with ``cond.paint``, the paint-with-words bias of :func:`paint_bias`).

    ``params`` may be an ensemble (``diffusion.ExpertParams``): each row then gets the expert that
    owns its t; one expert's call when every row's t has the same owner, else one call per expert.
    """
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), x_t.shape[:1])
    if not isinstance(params, diffusion.ExpertParams):
      return self._denoise_one(params, x_t, t, cond)
    owner = params.intervals.expert_of(t)

    def every_expert(_):
      outs = [self._denoise_one(params.select(jnp.int32(e)), x_t, t, cond)
              for e in range(params.intervals.num_experts)]
      return jnp.select([owner[:, None, None] == e for e in range(len(outs))], outs)

    return jax.lax.cond(jnp.all(owner == owner[0]), lambda _: self._routed(params, x_t, t, cond),
                        every_expert, None)

  def _routed(self, params: diffusion.ExpertParams, x_t: jax.Array, t: jax.Array,
              cond: Conditioning) -> jax.Array:
    """One expert's call: the owner of ``t[0]``, for rows that all share its interval."""
    return self._denoise_one(params.select(params.intervals.expert_of(t[0])), x_t, t, cond)

  def _denoise_one(self, params: Any, x_t: jax.Array, t: jax.Array, cond: Conditioning
                   ) -> jax.Array:
    """``denoise`` for a single model's ``params``."""

    def rows(x, t, states, mask, pooled, paint):
      scaled_bias = None if paint is None else paint_bias(self.process, paint, t)
      return self.denoiser.apply({"params": params}, x, t, states, mask, global_cond=pooled,
                                 scaled_cross_attention_bias=scaled_bias)

    return row_blocks.in_row_shards(rows, self.row_mesh, self.chunk_rows, x_t, t, cond.states,
                                    cond.mask, cond.pooled, cond.paint)

  def generate_tokens(self, params: Any, conditioning: Conditioning, key: jax.Array,
                      settings: diffusion.SamplerConfig, *, null: Conditioning | None = None,
                      init_tokens: jax.Array | None = None,
                      inpaint_mask: jax.Array | None = None,
                      switch_to: Conditioning | None = None,
                      switch_below: jax.Array | int = 0,
                      token_guidance: jax.Array | None = None) -> jax.Array:
    """Codes ``[B, N]`` int32 for ``conditioning`` rows ``[B]`` (call inside ``jax.jit``).

    Args:
      params: the denoiser's parameters, or an ensemble's (``diffusion.ExpertParams``: each step
        runs only the expert owning its t, selected inside the program).
      conditioning: the prompts' conditioning.
      key: PRNG key; the same key gives the same tokens.
      settings: steps, guidance, truncation, purity, start time (static).
      null: the unconditional rows; required when ``settings`` uses guidance.
      init_tokens: ``[B, N]`` codes to inpaint or edit; inpaint_mask: ``[B, N]`` bool, True =
        regenerate.
      switch_to, switch_below: steps with t < ``switch_below`` (a scalar, may be traced) are
        conditioned on ``switch_to`` (same shapes as ``conditioning``) instead: the prompt-switch
        experiment of ``python -m vqd_jax.evaluate prompt-switch``.
      token_guidance: ``[B, N]`` guidance scales per token in place of
        ``settings.guidance_scale`` (paint-with-words: unpainted positions get their own), or None.
    """
    guided = diffusion.uses_guidance(settings.guidance_scale)
    if guided and null is None:
      raise ValueError("guidance_scale != 1 needs the null conditioning (null=...).")
    if token_guidance is not None and not guided:
      raise ValueError("token_guidance needs guidance: set guidance_scale != 1.")
    # The sampler's contract: with guidance, rows [:B] are unconditional.
    rows = lambda c: stack_rows(null, c) if guided else c
    cond = rows(conditioning)
    later = None if switch_to is None else rows(switch_to)
    denoise = self.denoise
    if isinstance(params, diffusion.ExpertParams):
      denoise = self._routed  # all rows of a sampler step share t: one expert per step

    def step(x_t, t):
      c = cond
      if later is not None:
        c = jax.tree.map(lambda a, b: jnp.where(jnp.max(t) < switch_below, b, a), cond, later)
      out = denoise(params, x_t, t, c)
      if token_guidance is None:
        return out
      return per_token_guidance(out, token_guidance, settings.guidance_scale)

    return diffusion.sample(step, key, self.process,
                            batch_size=conditioning.batch_size, num_tokens=self.num_tokens,
                            init_tokens=init_tokens, inpaint_mask=inpaint_mask,
                            **settings.kwargs())
