"""The one interface between prompts and the denoiser: tokenizer, encoder, null, caption dropout.

  ids, mask = conditioner.tokenize(prompts)        # host: int32 [B, L], bool [B, L]
  cond = conditioner.encode(params, ids, mask)     # Conditioning(states [B, L, D], mask, pooled)
  null = conditioner.null(params, batch_size)      # the unconditional branch of guidance
  cond = conditioner.drop(key, cond, null, rate)   # caption dropout while training

With precomputed embedding sources (``embeddings``: eDiff-I's T5 / CLIP text / CLIP image, see
:mod:`vqd_jax.text.embeddings`) ``encode`` also takes their batch entries; each source then owns a
segment of the context after the text tokens, and ``drop`` drops every source independently.

Training, the pipeline and the sample command all go through it, so an encoder is a choice made
once, in the config: ``word`` (a small ``TextEncoder`` trained with the denoiser) or ``clip`` (a
pretrained CLIP text transformer, frozen; VQ-Diffusion's states are L2-normalised per token and
computed without a padding mask). ``params`` is the run's parameter dict; the conditioner reads
``params["text_encoder"]`` and, when present, the learned null ``params["null_embedding"]``
(``[L, D]``, diffusers' ``LearnedClassifierFreeSamplingEmbeddings``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.text import embeddings as embeddings_lib
from vqd_jax.text.conditioning import caption_drop_mask, drop_captions

SOURCES = ("word", "clip")


@flax.struct.dataclass
class Conditioning:
  """What the denoiser is conditioned on, row-aligned with the images.

  Attributes:
    states: ``[B, L, D]`` cross-attention states.
    mask: ``[B, L]`` bool (True = real token), or None to attend to every position.
    pooled: ``[B, P]`` global embedding for the denoiser's ``global_cond``, or None.
    paint: ``[B, N, L]`` paint-with-words weights (image token n, text token l), or None
      (``vqd_jax.inference.paint``).
  """
  states: jax.Array
  mask: jax.Array | None = None
  pooled: jax.Array | None = None
  paint: jax.Array | None = None

  @property
  def batch_size(self) -> int:
    return self.states.shape[0]


def stack_rows(first: Conditioning, second: Conditioning) -> Conditioning:
  """Rows of ``first`` then ``second`` (``[2B, ...]``): guidance's ``[null, prompts]`` batch.

  A missing mask reads as all tokens real and a missing paint map as no paint."""
  def cat(a, b, fill):
    if a is None and b is None:
      return None
    a = fill(first) if a is None else a
    b = fill(second) if b is None else b
    return jnp.concatenate([a.astype(b.dtype), b])
  all_real = lambda c: jnp.ones(c.states.shape[:2], bool)
  painted = first.paint if first.paint is not None else second.paint
  no_paint = lambda c: jnp.zeros((c.batch_size,) + painted.shape[1:], jnp.float32)
  return Conditioning(states=cat(first.states, second.states, None),
                      mask=cat(first.mask, second.mask, all_real),
                      pooled=None if first.pooled is None else cat(first.pooled, second.pooled, None),
                      paint=cat(first.paint, second.paint, no_paint))


@dataclasses.dataclass(frozen=True, eq=False)
class Conditioner:
  """Tokenizer + text encoder + null embedding + caption dropout (see the module docstring).

  Attributes:
    tokenizer: callable ``list[str] -> (ids [B, L], mask [B, L])`` (``WordTokenizer``,
      ``CLIPTokenizerWrapper``).
    encoder: ``TextEncoder`` (source ``word``) or ``CLIPTextEncoder`` (source ``clip``).
    source: ``word`` or ``clip``.
    trainable: whether training updates the encoder (False: gradients stop at its output).
    use_mask: pass the padding mask to the encoder and the denoiser (VQ-Diffusion's CLIP: False).
    embeddings: precomputed sources conditioned on besides the text encoder.
  """
  tokenizer: Any
  encoder: nn.Module
  source: str = "word"
  trainable: bool = True
  use_mask: bool = True
  embeddings: tuple[embeddings_lib.EmbeddingSource, ...] = ()

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"Unknown text source {self.source!r}; choose one of {SOURCES}.")

  # -- sizes ----------------------------------------------------------------------------------------

  @property
  def width(self) -> int:
    """D, the width of the states (the denoiser's ``cross_attention_dim``)."""
    return self.encoder.config.hidden_size if self.source == "clip" else self.encoder.width

  @property
  def length(self) -> int:
    """L, the number of token positions."""
    return int(self.tokenizer.max_length)

  @property
  def context_length(self) -> int:
    """C, the cross-attention context: the text tokens, each source's segment, one null token."""
    if not self.embeddings:
      return self.length
    return self.length + sum(s.context_length for s in self.embeddings) + 1

  @property
  def pooled_width(self) -> int:
    """P, the width of the pooled vector for the denoiser's ``global_cond`` (0: none)."""
    return sum(s.pooled_width for s in self.embeddings)

  @property
  def null_init_stddev(self) -> float:
    # The learned null starts at the scale of real states: LayerNorm-ed (1) or unit-norm tokens.
    return self.width ** -0.5 if self.source == "clip" else 1.0

  # -- host side ------------------------------------------------------------------------------------

  def tokenize(self, prompts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [B, L] int32, mask [B, L] bool)``."""
    ids, mask = self.tokenizer([prompts] if isinstance(prompts, str) else list(prompts))
    return np.asarray(ids, np.int32), np.asarray(mask, bool)

  @functools.cached_property
  def _empty_prompt(self) -> tuple[np.ndarray, np.ndarray]:
    return self.tokenize([""])

  # -- jittable -------------------------------------------------------------------------------------

  def encode(self, params: dict[str, Any], ids: jax.Array, mask: jax.Array,
             embedded: Mapping[str, jax.Array] | None = None, use_text: bool = True
             ) -> Conditioning:
    """Token ids and mask ``[B, L]`` (and the sources' entries, ``embedded``) -> Conditioning
    (``states [B, C, D]``). A source missing from ``embedded`` contributes its null;
    ``use_text=False`` puts the text encoder's null in place of the prompt (e.g. image only)."""
    text_cond = (self._encode_text(params, ids, mask) if use_text
                 else self._text_null(params, ids.shape[0]))
    return self._with_embeddings(params, text_cond, embedded or {})

  def _encode_text(self, params: dict[str, Any], ids: jax.Array, mask: jax.Array) -> Conditioning:
    variables = {"params": params["text_encoder"]}
    if self.source == "clip":
      states = self.encoder.apply(variables, ids, mask if self.use_mask else None, normalize=True)
    else:
      states = self.encoder.apply(variables, ids, mask if self.use_mask else None)
    if not self.trainable:
      states = jax.lax.stop_gradient(states)
    return Conditioning(states=states, mask=mask if self.use_mask else None)

  def _with_embeddings(self, params: dict[str, Any], text_cond: Conditioning,
                       embedded: Mapping[str, jax.Array]) -> Conditioning:
    if not self.embeddings:
      return text_cond
    b = text_cond.batch_size
    states, mask, pooled = embeddings_lib.embedding_context(
        params["embeddings"], self.embeddings, embedded, None, b, text_cond.states.dtype)
    text_mask = (text_cond.mask if text_cond.mask is not None
                 else jnp.ones(text_cond.states.shape[:2], bool))
    return Conditioning(states=jnp.concatenate([text_cond.states, states], 1),
                        mask=jnp.concatenate([text_mask, mask], 1), pooled=pooled)

  def null(self, params: dict[str, Any], batch_size: int) -> Conditioning:
    """The unconditional rows: the learned null embedding (else the encoded empty prompt) and
    every source's null."""
    return self._with_embeddings(params, self._text_null(params, batch_size), {})

  def _text_null(self, params: dict[str, Any], batch_size: int) -> Conditioning:
    if "null_embedding" in params:
      null = params["null_embedding"]
      states = jnp.broadcast_to(null, (batch_size,) + null.shape)
      return Conditioning(states=states,
                          mask=jnp.ones((batch_size, null.shape[0]), bool) if self.use_mask else None)
    if self.source != "clip":
      raise ValueError("Classifier-free guidance needs a learned null embedding, and these "
                       "parameters have none; sample with guidance_scale=1.")
    ids, mask = (jnp.asarray(np.repeat(x, batch_size, axis=0)) for x in self._empty_prompt)
    return self._encode_text(params, ids, mask)

  def drop(self, key: jax.Array, cond: Conditioning, null: Conditioning, rate: float
           ) -> Conditioning:
    """Replaces each row's text by ``null``'s with probability ``rate`` and each embedding source
    by its null with the source's own rate, all independently (training)."""
    if not self.embeddings:
      states, mask = drop_captions(key, cond.states, cond.mask, null.states, rate)
      return cond.replace(states=states, mask=mask)
    b = cond.batch_size
    text_dropped = caption_drop_mask(key, b, rate)
    dropped = embeddings_lib.source_drop_masks(jax.random.fold_in(key, 1), b, self.embeddings)
    position = [jnp.broadcast_to(text_dropped[:, None], (b, self.length))]
    position += [jnp.broadcast_to(dropped[s.name][:, None], (b, s.context_length))
                 for s in self.embeddings]
    position = jnp.concatenate(position + [jnp.zeros((b, 1), bool)], 1)
    states = jnp.where(position[..., None], null.states.astype(cond.states.dtype), cond.states)
    mask = jnp.where(position, True, cond.mask)
    pooled = cond.pooled
    if pooled is not None:
      pooled_dropped = jnp.concatenate([
          jnp.broadcast_to(dropped[s.name][:, None], (b, s.pooled_width))
          for s in self.embeddings if s.has_pooled], 1)
      pooled = jnp.where(pooled_dropped, null.pooled, pooled)
    return cond.replace(states=states, mask=mask, pooled=pooled)

  # -- parameters -----------------------------------------------------------------------------------

  def init(self, key_encoder: jax.Array, key_null: jax.Array, ids: jax.Array, mask: jax.Array,
           pretrained: Any = None) -> dict[str, Any]:
    """``{"text_encoder", "null_embedding"}``: a fresh encoder (or ``pretrained``) and null."""
    if pretrained is None:
      if self.source == "clip":
        raise ValueError("A CLIP text source starts from pretrained weights: pass them "
                         "(vqd_jax.interop.clip.load_clip_text_encoder).")
      encoder = self.encoder.init(key_encoder, ids, mask if self.use_mask else None)["params"]
    else:
      encoder = pretrained
    null = nn.with_logical_partitioning(nn.initializers.normal(self.null_init_stddev),
                                        ("length", "text_embed"))(key_null, (self.length, self.width))
    params = {"text_encoder": encoder, "null_embedding": null}
    if self.embeddings:
      params["embeddings"] = embeddings_lib.projection_params(
          jax.random.fold_in(key_null, 1), self.embeddings, self.width, self.null_init_stddev)
    return params

  def trainable_labels(self, params: dict[str, Any]) -> dict[str, Any]:
    """The same tree as ``params`` with ``"train"`` or ``"freeze"`` per leaf (for optax)."""
    encoder_label = "train" if self.trainable else "freeze"
    return {k: jax.tree.map(lambda _, lab=(encoder_label if k == "text_encoder" else "train"): lab, v)
            for k, v in params.items()}
