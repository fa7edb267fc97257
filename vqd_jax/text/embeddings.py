"""Precomputed embedding sources (eDiff-I's T5, CLIP text and CLIP image) beside the text encoder.

Frozen encoders run once, before training (``python -m vqd_jax.encode``); the denoiser sees their
outputs through a learned projection to its context width. Each source has a fixed layout in the
batch, named after the source:

  ``{name}_states``  float ``[B, L_s, D_s]``  sequence output (``t5``, ``clip_text``)
  ``{name}_mask``    bool  ``[B, L_s]``       its padding mask (True = real token)
  ``{name}_pooled``  float ``[B, P_s]``       pooled output (``clip_text``, ``clip_image``)

In the conditioning a source owns a segment of the cross-attention context (its projected states;
``clip_image`` contributes its projected pooled vector as one token) and a segment of the pooled
vector that the denoiser adds to its timestep embedding. Dropping a source replaces both segments by
its learned nulls, so sources drop independently and "all dropped" is the unconditional branch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Which outputs each kind of source has: (sequence states, pooled vector).
KINDS: dict[str, tuple[bool, bool]] = {
    "t5": (True, False),
    "clip_text": (True, True),
    "clip_image": (False, True),
}
# eDiff-I's dropout rates (its appendix, Table 7).
PAPER_DROP_RATES = {"t5": 0.25, "clip_text": 0.2, "clip_image": 0.9}


@dataclasses.dataclass(frozen=True)
class EmbeddingSource:
  """One precomputed source.

  Attributes:
    name: ``t5``, ``clip_text`` or ``clip_image``.
    width: ``D_s``, the width of its states (0 without states).
    length: ``L_s``, its number of state positions (0 without states).
    pooled_width: ``P_s``, the width of its pooled vector (0 without one).
    drop_rate: probability of dropping it per training example.
  """
  name: str
  width: int = 0
  length: int = 0
  pooled_width: int = 0
  drop_rate: float = 0.0

  def __post_init__(self):
    if self.name not in KINDS:
      raise ValueError(f"Unknown embedding source {self.name!r}; choose from {sorted(KINDS)}.")
    has_states, has_pooled = KINDS[self.name]
    if has_states and (self.width <= 0 or self.length <= 0):
      raise ValueError(f"Embedding source {self.name!r} needs its state width and length "
                       f"(got width={self.width}, length={self.length}).")
    if has_pooled and self.pooled_width <= 0:
      raise ValueError(f"Embedding source {self.name!r} needs its pooled width.")
    if not 0.0 <= self.drop_rate <= 1.0:
      raise ValueError(f"Drop rate of {self.name!r} must be in [0, 1], got {self.drop_rate}.")

  @property
  def has_states(self) -> bool:
    return KINDS[self.name][0]

  @property
  def has_pooled(self) -> bool:
    return KINDS[self.name][1]

  @property
  def context_length(self) -> int:
    """Positions this source takes in the cross-attention context."""
    return self.length if self.has_states else 1

  def batch_keys(self) -> tuple[str, ...]:
    """The batch entries it reads (see the module docstring)."""
    keys = (f"{self.name}_states", f"{self.name}_mask") if self.has_states else ()
    return keys + ((f"{self.name}_pooled",) if self.has_pooled else ())


def source_drop_masks(key: jax.Array, batch_size: int, sources: Sequence[EmbeddingSource]
                      ) -> dict[str, jax.Array]:
  """``{name: bool [B]}``: True where that source is dropped, independently per source."""
  keys = jax.random.split(key, max(len(sources), 1))
  return {s.name: jax.random.uniform(k, (batch_size,)) < s.drop_rate for s, k in zip(sources, keys)}


def check_inputs(given: Mapping[str, Any], sources: Sequence[EmbeddingSource],
                 batch_size: int) -> None:
  """Raises ValueError naming the first entry whose shape does not fit its source."""
  for s in sources:
    expected = {}
    if s.has_states:
      expected[f"{s.name}_states"] = (batch_size, s.length, s.width)
      expected[f"{s.name}_mask"] = (batch_size, s.length)
    if s.has_pooled:
      expected[f"{s.name}_pooled"] = (batch_size, s.pooled_width)
    present = [k for k in expected if k in given]
    if present and len(present) != len(expected):
      raise ValueError(f"Embedding source {s.name!r} has {present} but not "
                       f"{sorted(set(expected) - set(present))}; give all of its entries or none.")
    for k in present:
      if tuple(given[k].shape) != expected[k]:
        raise ValueError(f"{k} has shape {tuple(given[k].shape)}, but the run's {s.name!r} source "
                         f"expects {expected[k]} (width and length from the run's config); encode "
                         "the records with the encoder the config names.")


def pad_to_length(states: np.ndarray, mask: np.ndarray, length: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Host side: ``states [B, l, D]``, ``mask [B, l]`` cut or zero-padded to ``length`` positions."""
  b, l, d = states.shape
  if l >= length:
    return states[:, :length], mask[:, :length]
  pad = length - l
  return (np.concatenate([states, np.zeros((b, pad, d), states.dtype)], 1),
          np.concatenate([mask, np.zeros((b, pad), bool)], 1))


def projection_params(key: jax.Array, sources: Sequence[EmbeddingSource], context_width: int,
                      null_stddev: float) -> dict[str, Any]:
  """Fresh ``{name: {"proj": {kernel, bias}, "null_states", "null_pooled"}, "context_null"}``.

  ``proj`` maps a source's states (or, for ``clip_image``, its pooled vector) to the context
  width; the nulls are what a dropped source contributes; ``context_null`` is one always-present
  learned token, so attention has somewhere to go when every source is dropped.
  """
  params: dict[str, Any] = {}
  keys = jax.random.split(key, 3 * len(sources) + 1)
  for i, s in enumerate(sources):
    k_proj, k_null, k_pool = keys[3 * i:3 * i + 3]
    fan_in = s.width if s.has_states else s.pooled_width
    entry = {"proj": {"kernel": jax.random.normal(k_proj, (fan_in, context_width)) * fan_in ** -0.5,
                      "bias": jnp.zeros((context_width,))},
             "null_states": jax.random.normal(k_null, (s.context_length, context_width)) * null_stddev}
    if s.has_pooled:
      entry["null_pooled"] = jax.random.normal(k_pool, (s.pooled_width,)) * s.pooled_width ** -0.5
    params[s.name] = entry
  params["context_null"] = jax.random.normal(keys[-1], (1, context_width)) * null_stddev
  return params


def _segment(params: Mapping[str, Any], s: EmbeddingSource, given: Mapping[str, jax.Array],
             dropped: jax.Array, batch_size: int, dtype: Any):
  """One source's ``(states [B, C_s, D], mask [B, C_s], pooled [B, P_s] or None)``."""
  p = params[s.name]
  null_states = jnp.broadcast_to(p["null_states"].astype(dtype),
                                 (batch_size,) + p["null_states"].shape)
  null_mask = jnp.ones((batch_size, s.context_length), bool)
  null_pooled = (jnp.broadcast_to(p["null_pooled"].astype(jnp.float32),
                                  (batch_size, s.pooled_width)) if s.has_pooled else None)
  if s.batch_keys()[0] not in given:  # not given: the null, as when dropped
    return null_states, null_mask, null_pooled
  project = lambda x: (x.astype(jnp.float32) @ p["proj"]["kernel"] + p["proj"]["bias"]).astype(dtype)
  if s.has_states:
    states, mask = project(given[f"{s.name}_states"]), given[f"{s.name}_mask"].astype(bool)
  else:
    states, mask = project(given[f"{s.name}_pooled"])[:, None], null_mask
  pooled = given[f"{s.name}_pooled"].astype(jnp.float32) if s.has_pooled else None
  states = jnp.where(dropped[:, None, None], null_states, states)
  mask = jnp.where(dropped[:, None], True, mask)
  if pooled is not None:
    pooled = jnp.where(dropped[:, None], null_pooled, pooled)
  return states, mask, pooled


def embedding_context(params: Mapping[str, Any], sources: Sequence[EmbeddingSource],
                      given: Mapping[str, jax.Array], dropped: Mapping[str, jax.Array] | None,
                      batch_size: int, dtype: Any = jnp.float32
                      ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """The sources' part of the conditioning.

  Args:
    params: from :func:`projection_params`.
    sources: the run's sources, in its order.
    given: batch entries (module docstring); a source absent from it contributes its nulls.
    dropped: ``{name: bool [B]}`` (training dropout, or everything True for the null), or None.
    batch_size: B.

  Returns:
    ``(states [B, C, D], mask [B, C], pooled [B, P] or None)``: the segments of every source, then
    the context null token; pooled is the concatenation of the pooled segments.
  """
  check_inputs(given, sources, batch_size)
  states, masks, pooled = [], [], []
  for s in sources:
    drop = jnp.zeros((batch_size,), bool) if dropped is None else dropped[s.name]
    st, m, pl = _segment(params, s, given, drop, batch_size, dtype)
    states.append(st)
    masks.append(m)
    if pl is not None:
      pooled.append(pl)
  null = params["context_null"].astype(dtype)
  states.append(jnp.broadcast_to(null, (batch_size,) + null.shape))
  masks.append(jnp.ones((batch_size, null.shape[0]), bool))
  return (jnp.concatenate(states, 1), jnp.concatenate(masks, 1),
          jnp.concatenate(pooled, 1) if pooled else None)
