"""Sampling an autoregressive token model in one jitted program.

One ``lax.scan`` over the N raster positions. A step asks ``next_log_probs(carry, previous, n)`` for
``log p(x_n | x_<n)`` of every row, mixes classifier-free guidance's two halves, filters the
logits (temperature, top-k, top-p) and draws with the key ``fold_in(key, n)``. Two ways to get the
log-probabilities (:class:`ARGenerator`):

* ``use_cache=True``: the key-value cache of every self-attention is the scan's carry; a step runs
  the network on one position (flax lm1b's decoding).
* ``use_cache=False``: a step reruns the network on the whole sequence drawn so far and reads
  position n, as the VQ-Diffusion paper's AR baseline did: N full passes per image.

The same key draws the same tokens either way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from vqd_jax.autoregressive.model import ARTransformer, decoder_context
from vqd_jax.text.conditioner import Conditioning, stack_rows


@dataclasses.dataclass(frozen=True)
class ARSamplerConfig:
  """How to draw each token (hashable: a static argument of jitted programs).

  Attributes:
    temperature: logits are divided by it (> 0; 1 = the model's distribution).
    top_k: keep the k most likely codes (0 = all).
    top_p: keep the smallest set of most likely codes whose mass reaches p (1 = all).
    guidance_scale: classifier-free guidance s on log-probabilities, ``u + s·(c − u)`` (1 = off).
    use_cache: key-value cached decoding, or full recomputation of the prefix at every position.
  """
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  guidance_scale: float = 1.0
  use_cache: bool = True

  def __post_init__(self):
    if not (self.temperature > 0 and self.temperature < float("inf")):
      raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}.")
    if int(self.top_k) != self.top_k or self.top_k < 0:
      raise ValueError(f"top_k must be an integer >= 0 (0 keeps every code), got {self.top_k}.")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1] (1 keeps every code), got {self.top_p}.")
    if not self.guidance_scale == self.guidance_scale or self.guidance_scale < 0:
      raise ValueError(f"guidance_scale must be a number >= 0, got {self.guidance_scale}.")

  @property
  def guided(self) -> bool:
    return self.guidance_scale != 1.0


def filter_logits(logits: jax.Array, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """``[..., K]`` logits divided by ``temperature``, with codes outside the top-k and outside the
  top-p nucleus set to −inf (ties at a threshold are kept; the most likely code always is)."""
  logits = logits.astype(jnp.float32) / temperature
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    # A code is kept while the mass of the codes before it is below p.
    kept = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def guided_log_probs(log_p: jax.Array, guidance_scale: float) -> jax.Array:
  """``[2B, K]`` rows ``[null, cond]`` -> ``[B, K]`` = u + s·(c − u) (unnormalised)."""
  uncond, cond = jnp.split(log_p, 2, axis=0)
  return uncond + guidance_scale * (cond - uncond)


NextLogProbs = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]]


def sample_autoregressive(next_log_probs: NextLogProbs, carry: Any, key: jax.Array, *,
                          batch_size: int, num_tokens: int, start_token: int,
                          settings: ARSamplerConfig) -> jax.Array:
  """Codes ``[B, N]`` int32 drawn position by position (call inside ``jax.jit``).

  ``next_log_probs(carry, tokens, n) -> (log_p [R, K], carry)`` gets the codes drawn so far,
  ``tokens [B, N]`` (positions ≥ n hold the start token), and returns position n's
  log-probabilities for R = B rows, or R = 2B rows ``[null, cond]`` with guidance.
  """
  def step(state, n):
    inner, tokens = state
    log_p, inner = next_log_probs(inner, tokens, n)
    if settings.guided:
      log_p = guided_log_probs(log_p, settings.guidance_scale)
    logits = filter_logits(log_p, settings.temperature, settings.top_k, settings.top_p)
    drawn = jax.random.categorical(jax.random.fold_in(key, n), logits).astype(jnp.int32)
    return (inner, tokens.at[:, n].set(drawn)), None

  tokens = jnp.full((batch_size, num_tokens), start_token, jnp.int32)
  (_, tokens), _ = jax.lax.scan(step, (carry, tokens), jnp.arange(num_tokens))
  return tokens


@dataclasses.dataclass(frozen=True)
class ARGenerator:
  """An :class:`ARTransformer` and how to sample it (``generate_tokens``)."""
  model: ARTransformer

  @property
  def num_tokens(self) -> int:
    return self.model.num_tokens

  def generate_tokens(self, params: Any, conditioning: Conditioning, key: jax.Array,
                      settings: ARSamplerConfig, *, null: Conditioning | None = None
                      ) -> jax.Array:
    """Codes ``[B, N]`` int32 for ``conditioning`` rows ``[B]`` (call inside ``jax.jit``).

    ``null`` (the unconditional rows) is required with guidance. The same key gives the same
    tokens with and without the cache.
    """
    if settings.guided and null is None:
      raise ValueError("guidance_scale != 1 needs the null conditioning (null=...).")
    rows = stack_rows(null, conditioning) if settings.guided else conditioning
    both = lambda tokens: jnp.concatenate([tokens, tokens]) if settings.guided else tokens
    if settings.use_cache:
      decoder = self.model.clone(decode=True)
      shapes = jax.eval_shape(lambda: decoder.init(
          jax.random.key(0), jnp.zeros((rows.batch_size, self.num_tokens), jnp.int32),
          rows.states, rows.mask))["cache"]
      cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      context = decoder_context(self.model, params, rows.states)

      def next_log_probs(cache, tokens, n):
        previous = jnp.where(n == 0, self.model.start_token,
                             jnp.take(tokens, jnp.maximum(n - 1, 0), axis=1))
        log_p, variables = decoder.apply({"params": params, "cache": cache},
                                         both(previous[:, None]), rows.states, rows.mask,
                                         position=n, context_kv=context, mutable=["cache"])
        return log_p[:, 0], variables["cache"]
    else:
      cache = ()

      def next_log_probs(cache, tokens, n):
        # Positions >= n hold the start token; causality keeps them out of position n's output.
        log_p = self.model.apply({"params": params}, both(tokens), rows.states, rows.mask)
        return jnp.take(log_p, n, axis=1), cache

    return sample_autoregressive(next_log_probs, cache, key, batch_size=conditioning.batch_size,
                                 num_tokens=self.num_tokens, start_token=self.model.start_token,
                                 settings=settings)
