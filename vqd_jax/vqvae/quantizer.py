"""The vector quantizer: nearest-code lookup, straight-through gradients, VQ losses, usage statistics.

The codebook is the parameter ``quantize/embedding`` ``[K, D]`` (diffusers' name). Statistics that
are not trained by the optimizer live in the ``'vq_stats'`` collection and are updated only when the
caller makes that collection mutable during training:

* ``usage`` ``[K]``: EMA of the fraction of latent vectors assigned to each code (sums to 1); dead-code
  restart reads it;
* ``ema_count`` ``[K]`` and ``ema_sum`` ``[K, D]`` (only with ``use_ema``): EMA of per-code assignment
  counts and latent sums, from which :func:`vqd_jax.vqvae.codebook.codebook_from_ema` rebuilds the
  codebook (van den Oord et al. 2017, appendix A.1).

Rewriting the codebook (EMA, initialisation from encoder outputs, dead-code restart) is done by the
trainer with the pure functions of :mod:`vqd_jax.vqvae.codebook`, because parameters are immutable
inside ``apply``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
STATS = "vq_stats"


def nearest_codes(latents: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Index of the nearest code and its squared distance, for ``latents`` ``[N, D]``.

  Returns ``(indices int32 [N], squared_distance float32 [N])``. Computed in float32 as
  ``|z|^2 - 2 z.e + |e|^2``, which is what an ``argmin(cdist)`` picks (ties go to the lowest index).
  """
  latents = latents.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  d2 = (jnp.sum(latents ** 2, axis=1, keepdims=True)
        - 2.0 * latents @ codebook.T
        + jnp.sum(codebook ** 2, axis=1)[None, :])
  indices = jnp.argmin(d2, axis=1).astype(jnp.int32)
  best = jnp.take_along_axis(d2, indices[:, None], axis=1)[:, 0]
  return indices, jnp.maximum(best, 0.0)


def code_counts(indices: jax.Array, num_codes: int) -> jax.Array:
  """How many entries of ``indices`` (any shape) equal each code: float32 ``[K]``."""
  return jnp.zeros((num_codes,), jnp.float32).at[indices.reshape(-1)].add(1.0)


def perplexity(counts: jax.Array) -> jax.Array:
  """``exp(entropy)`` of the code histogram ``counts`` ``[K]``: the effective number of codes used."""
  probs = counts / jnp.maximum(jnp.sum(counts), 1.0)
  return jnp.exp(-jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)),
                                    0.0)))


class VectorQuantizer(nn.Module):
  """Maps latents ``[B, h, w, D]`` to their nearest codebook vectors.

  Attributes:
    num_embeddings: K, the number of codes.
    embedding_dim: D, the code width (``vq_embed_dim``).
    use_ema: keep the EMA statistics that replace codebook gradients.
    ema_decay: decay of ``ema_count``/``ema_sum``.
    usage_decay: decay of the ``usage`` EMA; lower reacts faster in short runs.
  """
  num_embeddings: int
  embedding_dim: int
  use_ema: bool = False
  ema_decay: float = 0.99
  usage_decay: float = 0.99
  param_dtype: Dtype = jnp.float32

  def setup(self):
    k = self.num_embeddings
    # taming/diffusers initialise the codebook uniformly in [-1/K, 1/K].
    def uniform(key, shape, dtype):
      return jax.random.uniform(key, shape, dtype, -1.0 / k, 1.0 / k)

    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(uniform, ("codebook", "code_dim")),
        (k, self.embedding_dim), self.param_dtype)
    # Declared only where they exist or may be created, so that inference with params alone works.
    self.has_stats = self.has_variable(STATS, "usage") or self.is_mutable_collection(STATS)
    if self.has_stats:
      self.usage = self.variable(STATS, "usage", lambda: jnp.full((k,), 1.0 / k, jnp.float32))
      if self.use_ema:
        self.ema_count = self.variable(STATS, "ema_count", lambda: jnp.ones((k,), jnp.float32))
        self.ema_sum = self.variable(
            STATS, "ema_sum", lambda: jnp.asarray(self.embedding, jnp.float32))

  def codebook(self) -> jax.Array:
    """``[K, D]`` float32."""
    return jnp.asarray(self.embedding, jnp.float32)

  def lookup(self, indices: jax.Array) -> jax.Array:
    """Codes ``[...]`` -> code vectors ``[..., D]`` (float32)."""
    return jnp.take(self.codebook(), indices, axis=0)

  def __call__(self, latents: jax.Array, train: bool = False
               ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Quantizes ``latents`` ``[B, h, w, D]``.

    Returns:
      ``quantized`` ``[B, h, w, D]`` whose value is the nearest code and whose gradient flows to
      ``latents`` unchanged (straight-through); ``indices`` int32 ``[B, h, w]``; and ``aux`` with
      ``commitment_loss`` (mean ``|z - sg(e)|^2``), ``codebook_loss`` (mean ``|sg(z) - e|^2``),
      ``perplexity``, ``counts`` ``[K]``, and for codebook maintenance the flattened latents
      ``flat_latents`` ``[N, D]`` and their ``squared_error`` ``[N]`` to the chosen code.
    """
    if latents.shape[-1] != self.embedding_dim:
      raise ValueError(f"Quantizer expects latents with {self.embedding_dim} channels "
                       f"(vq_embed_dim), got shape {latents.shape}.")
    latents = latents.astype(jnp.float32)
    flat = latents.reshape(-1, self.embedding_dim)
    codebook = self.codebook()
    indices, sq_error = nearest_codes(jax.lax.stop_gradient(flat), jax.lax.stop_gradient(codebook))
    codes = jnp.take(codebook, indices, axis=0).reshape(latents.shape)
    commitment = jnp.mean((latents - jax.lax.stop_gradient(codes)) ** 2)
    codebook_loss = jnp.mean((jax.lax.stop_gradient(latents) - codes) ** 2)
    quantized = latents + jax.lax.stop_gradient(codes - latents)
    counts = code_counts(indices, self.num_embeddings)

    if train and self.has_stats and self.is_mutable_collection(STATS):
      n = flat.shape[0]
      u = self.usage_decay
      self.usage.value = u * self.usage.value + (1.0 - u) * counts / n
      if self.use_ema:
        d = self.ema_decay
        sums = jax.ops.segment_sum(jax.lax.stop_gradient(flat), indices, self.num_embeddings)
        self.ema_count.value = d * self.ema_count.value + (1.0 - d) * counts
        self.ema_sum.value = d * self.ema_sum.value + (1.0 - d) * sums

    aux = {"commitment_loss": commitment, "codebook_loss": codebook_loss,
           "perplexity": perplexity(counts), "counts": counts,
           "flat_latents": jax.lax.stop_gradient(flat), "squared_error": sq_error}
    return quantized, indices.reshape(latents.shape[:-1]), aux
