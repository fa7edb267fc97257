"""Contrastive image-text losses (CLIP, SigLIP) and retrieval accuracy.

* CLIP (``"softmax"``): logits ``exp(t) · îᵀt̂`` between L2-normalised image and text
  embeddings; the loss is the mean of the image->text and text->image softmax cross-entropies.
* SigLIP (``"sigmoid"``): logits ``exp(t) · îᵀt̂ + b``; every pair is a binary problem,
  ``-Σ log σ(z_ij · logit_ij) / N`` with ``z = +1`` for matching pairs and ``-1`` otherwise.

``positives`` (bool ``[N, N]``) says which pairs match; None is the diagonal, as in both papers. A
dataset with repeated captions can mark every same-caption pair as matching (softmax then spreads
each row's target evenly over its positives), so identical captions are not pushed apart.

Shapes: N pairs, E embedding width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LOSSES = ("softmax", "sigmoid")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """``[..., E]`` scaled to unit L2 norm along the last axis (float32)."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def contrastive_logits(image_embeds: jax.Array, text_embeds: jax.Array, logit_scale: jax.Array,
                       logit_bias: jax.Array | None = None) -> jax.Array:
  """``[N, M]`` logits ``exp(logit_scale) · cos(image_i, text_j) (+ logit_bias)``.

  Args:
    image_embeds: ``[N, E]``; text_embeds: ``[M, E]`` (not necessarily normalised).
    logit_scale: scalar, the log of the inverse temperature.
    logit_bias: scalar (SigLIP) or None.
  """
  sims = l2_normalize(image_embeds) @ l2_normalize(text_embeds).T
  logits = jnp.exp(logit_scale.astype(jnp.float32)) * sims
  return logits if logit_bias is None else logits + logit_bias.astype(jnp.float32)


def _positives(n: int, positives: jax.Array | None) -> jax.Array:
  return jnp.eye(n, dtype=bool) if positives is None else positives.astype(bool)


def softmax_loss(logits: jax.Array, positives: jax.Array | None = None) -> jax.Array:
  """CLIP's symmetric cross-entropy of square ``logits [N, N]`` (row i = image i)."""
  pos = _positives(logits.shape[0], positives).astype(jnp.float32)

  def one_way(z, p):  # target: uniform over each row's positives
    return -jnp.mean(jnp.sum(p / p.sum(1, keepdims=True) * jax.nn.log_softmax(z, axis=1), 1))

  return 0.5 * (one_way(logits, pos) + one_way(logits.T, pos.T))


def sigmoid_loss(logits: jax.Array, positives: jax.Array | None = None) -> jax.Array:
  """SigLIP's pairwise loss of ``logits [N, N]``: summed over pairs, divided by N."""
  signs = jnp.where(_positives(logits.shape[0], positives), 1.0, -1.0)
  return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / logits.shape[0]


def contrastive_loss(kind: str, logits: jax.Array, positives: jax.Array | None = None
                     ) -> jax.Array:
  """``softmax_loss`` or ``sigmoid_loss`` by name (``config.loss``)."""
  if kind == "softmax":
    return softmax_loss(logits, positives)
  if kind == "sigmoid":
    return sigmoid_loss(logits, positives)
  raise ValueError(f"Contrastive loss must be one of {LOSSES}, got {kind!r}.")


def same_rows(ids: jax.Array) -> jax.Array:
  """bool ``[N, N]``: rows of ``ids [N, L]`` that are identical (e.g. equal captions)."""
  return jnp.all(ids[:, None, :] == ids[None, :, :], axis=-1)


def retrieval_accuracy(image_embeds: np.ndarray, text_embeds: np.ndarray,
                       groups: np.ndarray | None = None) -> dict[str, float]:
  """Top-1 retrieval by cosine similarity over N matching pairs.

  Args:
    image_embeds, text_embeds: ``[N, E]``; pair i is (image i, text i).
    groups: int ``[N]``; items with equal group ids are interchangeable (e.g. identical captions:
      retrieving any of them is correct). None: every pair is its own group.

  Returns:
    ``image_to_text`` (for each image, is the most similar text one of its group's?),
    ``text_to_image`` (the converse) and ``chance`` (the expected accuracy of a random pick,
    ``mean_i |group(i)| / N``; the same both ways).
  """
  sims = np.asarray(contrastive_logits(jnp.asarray(image_embeds), jnp.asarray(text_embeds),
                                       jnp.float32(0.0)))  # cosine similarities
  n = sims.shape[0]
  if sims.shape != (n, n):
    raise ValueError(f"Retrieval needs as many images as texts; got {sims.shape}.")
  groups = np.arange(n) if groups is None else np.asarray(groups)
  same = groups[:, None] == groups[None, :]
  return {"image_to_text": float(np.mean(groups[sims.argmax(1)] == groups)),
          "text_to_image": float(np.mean(groups[sims.argmax(0)] == groups)),
          "chance": float(same.sum() / n ** 2)}
