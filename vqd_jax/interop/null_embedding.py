"""The learned classifier-free "null" text embedding of the diffusers VQ-Diffusion layout.

diffusers stores it as the component ``learned_classifier_free_sampling_embeddings/``
(``LearnedClassifierFreeSamplingEmbeddings``): ``config.json`` with ``learnable``, ``hidden_size``,
``length``; when learnable, one parameter ``embeddings`` ``[length, hidden_size]`` that replaces the
CLIP("") states for the unconditional half of guidance. It is used as stored, not normalised.
"""

from __future__ import annotations

import json
import os

import numpy as np

from vqd_jax.interop import state_dict as sd

NULL_EMBEDDING_COMPONENT = "learned_classifier_free_sampling_embeddings"


def load_learned_null_embedding(path: str | os.PathLike) -> np.ndarray | None:
  """Reads the learned null embedding ``[L, D]`` float32, or None when ``learnable`` is false.

  Args:
    path: the component folder, or a diffusers pipeline root holding it.

  Raises:
    FileNotFoundError: the folder, its ``config.json`` or (when learnable) its weights are missing.
    ValueError: the weights lack ``embeddings`` or its shape disagrees with the config.
  """
  directory = os.fspath(path)
  if not os.path.exists(os.path.join(directory, "config.json")):
    nested = os.path.join(directory, NULL_EMBEDDING_COMPONENT)
    if not os.path.exists(os.path.join(nested, "config.json")):
      raise FileNotFoundError(
          f"No config.json in {directory!r} (nor in {nested!r}): expected the diffusers component "
          f"{NULL_EMBEDDING_COMPONENT}/ saved by LearnedClassifierFreeSamplingEmbeddings.")
    directory = nested
  with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  if not config.get("learnable", False):
    return None
  state = sd.load_state_dict(sd.find_weights_file(directory))
  if "embeddings" not in state:
    raise ValueError(f"The weights in {directory!r} have no 'embeddings' entry "
                     f"(found {sorted(state)[:10]}).")
  embeddings = np.asarray(state["embeddings"], np.float32)
  expected = (config.get("length"), config.get("hidden_size"))
  if embeddings.ndim != 2 or any(e is not None and e != s for e, s in zip(expected, embeddings.shape)):
    raise ValueError(f"Null embedding in {directory!r} has shape {embeddings.shape}; its config "
                     f"says [length, hidden_size] = {list(expected)}.")
  return embeddings
