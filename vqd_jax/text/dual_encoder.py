"""A CLIP/SigLIP dual encoder whose towers are laid out like Hugging Face's CLIP ones.

Parameters (so each tower exports as, and loads back from, a transformers folder):

  text_model        CLIPTextEncoder      (HF ``CLIPTextModel``'s ``text_model.*``)
  text_projection   bias-free dense D->E (HF ``CLIPTextModelWithProjection.text_projection``)
  vision            CLIPVisionEncoder    (HF ``CLIPVisionModelWithProjection``: ``vision_model.*``,
                                          ``visual_projection``)
  logit_scale       scalar, log inverse temperature (CLIP and SigLIP)
  logit_bias        scalar (SigLIP only)

The pooled text state is the final-LayerNorm state at the first EOS token, which is where HF's
``CLIPTextModel`` pools when its config's ``eos_token_id`` is not 2 (the word tokenizer's EOS is 3).

Shapes: B batch, L tokens, S image side, E projection width.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqd_jax.layers import dense
from vqd_jax.text.clip import CLIPTextConfig, CLIPTextEncoder
from vqd_jax.text.clip_vision import CLIPVisionConfig, CLIPVisionEncoder
from vqd_jax.text.contrastive import LOSSES

CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP: temperature 0.07
SIGLIP_INIT_LOGIT_SCALE, SIGLIP_INIT_LOGIT_BIAS = math.log(10.0), -10.0  # SigLIP's t' and b


def pool_at_eos(states: jax.Array, ids: jax.Array, eos_id: int) -> jax.Array:
  """``states [B, L, D]`` at each row's first ``eos_id`` in ``ids [B, L]`` -> ``[B, D]``."""
  eos = jnp.argmax(ids == eos_id, axis=1)
  return jnp.take_along_axis(states, eos[:, None, None], axis=1)[:, 0]


class DualEncoder(nn.Module):
  """Image and text towers projected to one E-dimensional space (see the module docstring).

  Attributes:
    text_config, vision_config: the towers; ``vision_config.projection_dim`` is E for both.
    eos_id: the tokenizer's end-of-text id (the pooled position).
    loss: ``softmax`` (CLIP: no bias) or ``sigmoid`` (SigLIP: ``logit_bias``).
    init_logit_scale, init_logit_bias: None = the paper's value for ``loss``.
  """
  text_config: CLIPTextConfig
  vision_config: CLIPVisionConfig
  eos_id: int
  loss: str = "softmax"
  init_logit_scale: float | None = None
  init_logit_bias: float | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.loss not in LOSSES:
      raise ValueError(f"DualEncoder loss must be one of {LOSSES}, got {self.loss!r}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.text_model = CLIPTextEncoder(self.text_config, **kw)
    self.text_projection = dense(self.vision_config.projection_dim, ("embed", None),
                                 use_bias=False, name="text_projection", **kw)
    self.vision = CLIPVisionEncoder(self.vision_config, **kw)
    sigmoid = self.loss == "sigmoid"
    scale = self.init_logit_scale
    if scale is None:
      scale = SIGLIP_INIT_LOGIT_SCALE if sigmoid else CLIP_INIT_LOGIT_SCALE
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(scale), (), jnp.float32)
    if sigmoid:
      bias = SIGLIP_INIT_LOGIT_BIAS if self.init_logit_bias is None else self.init_logit_bias
      self.logit_bias = self.param("logit_bias", nn.initializers.constant(bias), (), jnp.float32)

  def encode_text(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """ids int ``[B, L]`` (mask bool ``[B, L]``) -> text_embeds ``[B, E]`` (not normalised)."""
    states = self.text_model(ids, mask, normalize=False)
    return self.text_projection(pool_at_eos(states, ids, self.eos_id))

  def encode_images(self, pixels: jax.Array) -> jax.Array:
    """Normalised pixels ``[B, S, S, 3]`` -> image_embeds ``[B, E]`` (not normalised)."""
    return self.vision(pixels)[1]

  def __call__(self, pixels: jax.Array, ids: jax.Array, mask: jax.Array | None = None
               ) -> dict[str, jax.Array]:
    """``image_embeds [B, E]``, ``text_embeds [B, E]``, ``logit_scale`` and, for SigLIP,
    ``logit_bias`` (scalars)."""
    out = {"image_embeds": self.encode_images(pixels), "text_embeds": self.encode_text(ids, mask),
           "logit_scale": self.logit_scale}
    if self.loss == "sigmoid":
      out["logit_bias"] = self.logit_bias
    return out
