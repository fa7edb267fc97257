"""CLIP score: how well images match their captions under a contrastive image-text model.

Per pair, ``100 * max(cos(image_embeds, text_embeds), 0)`` (Hessel et al. 2021 without their
2.5 rescaling; torchmetrics' ``CLIPScore``), averaged over the samples. The model is any CLIP in
the transformers layout that :func:`vqd_jax.text.load_encoder` reads:

* a full CLIP folder (``CLIPModel``: ``model_type`` ``clip``), e.g. ``clip-vit-base-patch32``;
* a folder holding ``clip_text/`` and ``clip_image/`` towers, as ``configs/clip.py`` runs write
  them: a score for datasets the shapes scorer cannot judge, from a model trained on them.

Scores are comparable only under one model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

TOWERS = ("clip_text", "clip_image")


def is_contrastive_run(path: str | os.PathLike) -> bool:
  """Whether ``path`` holds the two towers of a ``configs/clip.py`` run."""
  return all(os.path.isdir(os.path.join(path, name)) for name in TOWERS)


def load_clip_scorer(path: str | os.PathLike) -> tuple[Any, Any]:
  """``(text encoder, image encoder)`` of a full CLIP folder or a folder with both towers."""
  from vqd_jax.text import load_encoder  # pylint: disable=import-outside-toplevel
  path = os.fspath(path)
  if is_contrastive_run(path):
    return (load_encoder(os.path.join(path, TOWERS[0]), kind="clip_text"),
            load_encoder(os.path.join(path, TOWERS[1]), kind="clip_image"))
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise FileNotFoundError(
        f"{path!r} is neither a CLIP checkpoint folder (config.json of a CLIPModel) nor a folder "
        f"with {TOWERS[0]}/ and {TOWERS[1]}/ (a configs/clip.py run); pass one of those.")
  return load_encoder(path, kind="clip_text"), load_encoder(path, kind="clip_image")


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def clip_scores(text_encoder, image_encoder, images: np.ndarray, captions: Sequence[str],
                batch_size: int = 256) -> np.ndarray:
  """float64 ``[N]``: ``100 * max(cos, 0)`` of each uint8 image ``[N, H, W, 3]`` and its caption."""
  if len(images) != len(captions):
    raise ValueError(f"Got {len(images)} images but {len(captions)} captions.")
  if text_encoder.pooled_width != image_encoder.width:
    raise ValueError(f"The text tower embeds into {text_encoder.pooled_width} dimensions and the "
                     f"image tower into {image_encoder.width}: not one CLIP model.")
  out = []
  for start in range(0, len(captions), batch_size):
    text = text_encoder.encode(list(captions[start:start + batch_size]))[2]
    image = image_encoder.encode_images(np.asarray(images[start:start + batch_size]))
    cos = np.sum(_unit(np.asarray(text, np.float64)) * _unit(np.asarray(image, np.float64)), -1)
    out.append(np.maximum(100.0 * cos, 0.0))
  return np.concatenate(out) if out else np.zeros((0,))


def score_folder(samples_dir: str, clip_path: str,
                 scorer: tuple[Any, Any] | None = None) -> dict[str, Any]:
  """The CLIP score of every sample in ``samples_dir/samples.jsonl``: mean, its standard error,
  the number of samples and the unreadable files (left out, counted). ``scorer``: the
  ``load_clip_scorer(clip_path)`` pair if already loaded."""
  from vqd_jax.data import decode  # pylint: disable=import-outside-toplevel
  from vqd_jax.evaluation.shapes import load_samples  # pylint: disable=import-outside-toplevel
  text_encoder, image_encoder = scorer or load_clip_scorer(clip_path)
  images, captions, unreadable = [], [], []
  for record in load_samples(samples_dir):
    try:
      images.append(decode.read_image(os.path.join(samples_dir, record["file"])))
      captions.append(record["prompt"])
    except (OSError, ValueError, SyntaxError):
      unreadable.append(record["file"])
  if not images:
    raise ValueError(f"None of the samples listed in {samples_dir} could be read.")
  sizes = {im.shape for im in images}
  if len(sizes) > 1:  # the image tower resizes each one; keep them apart
    scores = np.concatenate([clip_scores(text_encoder, image_encoder, im[None], [c])
                             for im, c in zip(images, captions)])
  else:
    scores = clip_scores(text_encoder, image_encoder, np.stack(images), captions)
  n = len(scores)
  return {"clip_score": float(scores.mean()),
          "standard_error": float(scores.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
          "num_samples": n, "unreadable": unreadable, "clip": os.path.abspath(clip_path),
          "model": ("vqd_jax contrastive run (scores comparable only under this model)"
                    if is_contrastive_run(clip_path) else "CLIP checkpoint")}
