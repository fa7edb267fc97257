"""LPIPS weights from local files -> params of :class:`vqd_jax.vqvae.LPIPS`.

Accepted layouts (torch ``.pth``/``.bin`` or ``.safetensors``), in one file or split over two:

* VGG16 convolutions as torchvision names them, ``features.{i}.weight/bias`` (``vgg16-*.pth``), or as
  the ``lpips`` package's full state dict does, ``net.slice{s}.{i}.weight/bias``;
* the linear heads, ``lin{k}.model.1.weight`` ``[1, C, 1, 1]`` (the ``lpips`` package's
  ``weights/v0.1/vgg.pth``, also used by taming-transformers).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.interop import state_dict as sd_lib
from vqd_jax.vqvae.lpips import LPIPS

_RENAMES = ((r"^net\.slice\d+\.(\d+)\.", r"vgg.features.\1."),
            (r"^features\.(\d+)\.", r"vgg.features.\1."),
            (r"^lin(\d)\.model\.1\.", r"lin\1."))
_IGNORE = (r"scaling_layer", r"^classifier\.")


def load_lpips_params(*paths: str | os.PathLike) -> dict[str, Any]:
  """LPIPS params from one or more local weight files together holding the VGG16 trunk and heads.

  Raises:
    FileNotFoundError: a path does not exist.
    ValueError: weights are missing (e.g. only the heads file was given), naming the missing ones.
  """
  merged: dict[str, np.ndarray] = {}
  for path in paths:
    merged.update(sd_lib.load_state_dict(path))
  template = jax.eval_shape(
      lambda: LPIPS().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 32, 3))))
  params = sd_lib.state_dict_to_params(merged, template["params"], rules=_RENAMES, ignore=_IGNORE,
                                       what=f"LPIPS weights {[os.fspath(p) for p in paths]}")
  return jax.tree.map(jnp.asarray, params)
