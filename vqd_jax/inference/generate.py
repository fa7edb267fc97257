"""``generate_tokens``: the one path from conditioning to image tokens for the diffusion denoiser.

Training previews, ``VQDiffusionPipeline`` and ``python -m vqd_jax.sample`` all call it inside
their own ``jax.jit``; the whole reverse chain is one ``lax.scan`` (``vqd_jax.diffusion.sample``).
Classifier-free guidance runs the denoiser once per step on the ``[null, prompts]`` rows
(``stack_rows``); truncation, purity, fast steps and inpainting are ``SamplerConfig`` settings.

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
    """log p(x0 | x_t) ``[B, N, K]`` for tokens ``[B, N]``, t ``[B]`` and ``cond`` rows ``[B]``."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), x_t.shape[:1])

    def rows(x, t, states, mask, pooled):
      return self.denoiser.apply({"params": params}, x, t, states, mask, global_cond=pooled)

    return row_blocks.in_row_shards(rows, self.row_mesh, self.chunk_rows, x_t, t, cond.states,
                                    cond.mask, cond.pooled)

  def generate_tokens(self, params: Any, conditioning: Conditioning, key: jax.Array,
                      settings: diffusion.SamplerConfig, *, null: Conditioning | None = None,
                      init_tokens: jax.Array | None = None,
                      inpaint_mask: jax.Array | None = None) -> jax.Array:
    """Codes ``[B, N]`` int32 for ``conditioning`` rows ``[B]`` (call inside ``jax.jit``).

    Args:
      params: the denoiser's parameters.
      conditioning: the prompts' conditioning.
      key: PRNG key; the same key gives the same tokens.
      settings: steps, guidance, truncation, purity, start time (static).
      null: the unconditional rows; required when ``settings`` uses guidance.
      init_tokens: ``[B, N]`` codes to inpaint or edit; inpaint_mask: ``[B, N]`` bool, True =
        regenerate.
    """
    cond = conditioning
    if diffusion.uses_guidance(settings.guidance_scale):
      if null is None:
        raise ValueError("guidance_scale != 1 needs the null conditioning (null=...).")
      cond = stack_rows(null, cond)  # the sampler's contract: rows [:B] unconditional
    return diffusion.sample(lambda x_t, t: self.denoise(params, x_t, t, cond), key, self.process,
                            batch_size=conditioning.batch_size, num_tokens=self.num_tokens,
                            init_tokens=init_tokens, inpaint_mask=inpaint_mask,
                            **settings.kwargs())
