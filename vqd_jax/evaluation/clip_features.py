"""Contrastive image features for a Fréchet distance without the Inception weights.

``fid_clip`` is the Fréchet distance (:func:`vqd_jax.evaluation.fid.frechet_distance`) between
Gaussians fitted to the projected CLIP image embeddings (``image_embeds``, ``[N, E]``) of two
image sets, under any model :func:`vqd_jax.evaluation.clip_score.load_clip_scorer` reads: a CLIP
checkpoint folder or a ``configs/clip.py`` run. Its scale depends on the model, so it ranks
samples under one model only and is not comparable with published FIDs (Inception features);
every output that carries it says so (:func:`note`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vqd_jax.evaluation.clip_score import load_clip_scorer


def note(clip_path: str | os.PathLike) -> str:
  """The label every ``fid_clip`` figure carries."""
  return (f"not comparable with published FIDs (features of "
          f"{os.path.abspath(os.fspath(clip_path))})")


class ClipImageFeatures:
  """A CLIP image encoder in the interface of :func:`vqd_jax.evaluation.features.folder_features`.

  ``features(uint8 [B, H, W, 3])`` returns ``(image_embeds float32 [B, E], empty [B, 0])``: the
  embeddings take the place of the Inception pool features; there are no logits.
  """

  def __init__(self, image_encoder: Any, path: str | os.PathLike):
    self.image_encoder = image_encoder
    self.path = os.path.abspath(os.fspath(path))

  def features(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
    embeds = np.asarray(self.image_encoder.encode_images(np.asarray(images)), np.float32)
    return embeds, np.zeros((len(embeds), 0), np.float32)


def load_clip_features(path: str | os.PathLike) -> ClipImageFeatures:
  """The image tower of the CLIP folder or contrastive run at ``path``, as a feature model."""
  return ClipImageFeatures(load_clip_scorer(path)[1], path)
