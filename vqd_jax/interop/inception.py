"""Loads pytorch-fid's FID InceptionV3 weights into :mod:`vqd_jax.evaluation.inception`.

The standard file is pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``
(:data:`FID_WEIGHTS_URL`): the state dict of ``pytorch_fid.inception.fid_inception_v3()``, keys
``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ``fc.weight`` ...
(``num_batches_tracked`` counters are ignored). The state dict of pytorch-fid's ``InceptionV3``
wrapper (``blocks.0.0.conv.weight`` ...) is renamed to that layout; it lacks the ``fc``
classifier the logits need, so it is refused unless ``fc.*`` is added.

Loading never executes code: ``.safetensors`` directly, ``.pth``/``.pt`` only through
``torch.load(weights_only=True)`` (torch is then needed; ``python -m vqd_jax.convert inception``
writes the ``.safetensors`` once on a machine that has it).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.evaluation.inception import SIDE, FIDInceptionV3, InceptionFeatures
from vqd_jax.interop import state_dict as sd

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
# pytorch-fid's InceptionV3 wrapper: blocks.{i}.{j} is the j-th module of block i.
WRAPPER_BLOCKS = (("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"),
                  ("Conv2d_3b_1x1", "Conv2d_4a_3x3"),
                  ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                   "Mixed_6d", "Mixed_6e"),
                  ("Mixed_7a", "Mixed_7b", "Mixed_7c"))
_FIX = (f"pass the state dict of pytorch-fid's fid_inception_v3() (its released weights "
        f"{FID_WEIGHTS_URL.rsplit('/', 1)[-1]}, or their .safetensors conversion); torchvision's "
        "inception_v3 weights (1000 classes, AuxLogits) are a different network")


@functools.lru_cache(maxsize=1)
def param_shapes() -> dict:
  """The Flax params of :class:`FIDInceptionV3` as ``jax.ShapeDtypeStruct`` (nothing allocated)."""
  module = FIDInceptionV3()
  pixels = jnp.zeros((1, SIDE, SIDE, 3), jnp.float32)
  return jax.eval_shape(lambda: module.init(jax.random.key(0), pixels)["params"])


def _torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if leaf == "kernel" and len(shape) == 4:  # [kh, kw, I, O] -> [O, I, kh, kw]
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape)) if leaf == "kernel" else tuple(shape)


@functools.lru_cache(maxsize=1)
def expected_state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """``fid_inception_v3()`` state dict key -> torch shape (``num_batches_tracked`` left out)."""
  out = {}
  for path, leaf in flax.traverse_util.flatten_dict(param_shapes()).items():
    name = "weight" if path[-1] in ("kernel", "scale") else path[-1]
    out[".".join(path[:-1] + (name,))] = _torch_shape(path[-1], leaf.shape)
  return out


def standard_layout(state: Mapping[str, Any]) -> dict[str, Any]:
  """Renames the wrapper's ``blocks.{i}.{j}.`` keys and drops ``num_batches_tracked``."""
  out = {}
  for key, value in state.items():
    if key.endswith("num_batches_tracked"):
      continue
    match = re.match(r"blocks\.(\d+)\.(\d+)\.(.*)", key)
    if match:
      i, j = int(match.group(1)), int(match.group(2))
      if i < len(WRAPPER_BLOCKS) and j < len(WRAPPER_BLOCKS[i]):
        key = f"{WRAPPER_BLOCKS[i][j]}.{match.group(3)}"
    out[key] = value
  return out


def _listed(keys: list[str], limit: int = 8) -> str:
  more = f" ... ({len(keys)} in all)" if len(keys) > limit else ""
  return ", ".join(keys[:limit]) + more


def check_state_dict(state: Mapping[str, Any], where: str) -> None:
  """A ValueError naming ``where``, every problem and the fix, unless ``state`` (standard layout)
  holds exactly the FID InceptionV3's tensors with their shapes."""
  expected = expected_state_dict_shapes()
  missing = sorted(k for k in expected if k not in state)
  unexpected = sorted(k for k in state if k not in expected)
  misshaped = sorted(f"{k} {tuple(np.shape(v))} (expected {expected[k]})"
                     for k, v in state.items() if k in expected and
                     tuple(np.shape(v)) != expected[k])
  problems = [f"missing {_listed(missing)}"] if missing else []
  problems += [f"unexpected {_listed(unexpected)}"] if unexpected else []
  problems += [f"wrong shapes: {_listed(misshaped)}"] if misshaped else []
  if not problems:
    return
  hint = _FIX
  if missing and all(k.startswith("fc.") for k in missing):
    hint = ("pytorch-fid's InceptionV3 wrapper drops the fc classifier that the logits (Inception "
            "Score) need; " + _FIX)
  raise ValueError(f"{where} is not the FID InceptionV3 weights: {'; '.join(problems)}. Fix: "
                   f"{hint}.")


def _read_torch(path: str) -> Mapping[str, Any]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f"Reading the PyTorch file {path!r} needs torch (pip install torch). Or convert it once on "
        f"a machine with torch, python -m vqd_jax.convert inception {path} inception.safetensors, "
        "and load the .safetensors file (no torch needed).") from e
  try:
    # weights_only=True: a pickle can run arbitrary code, this refuses anything but tensors.
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise ValueError(f"Cannot read {path!r} as PyTorch weights with torch.load(weights_only=True) "
                     f"({reason}). Fix: {_FIX}.") from e
  if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
    state = state["state_dict"]
  if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
    raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state dict of tensors. "
                     f"Fix: {_FIX}.")
  return {k: (v.detach().float() if v.is_floating_point() else v.detach()).numpy()
          for k, v in state.items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A weights file (``.safetensors``; else a torch file through ``weights_only``) as numpy arrays.

  Raises:
    FileNotFoundError: no such file (or a folder).
    ValueError: not readable as weights.
    ImportError: a torch file, and torch is not installed.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is a folder; pass the Inception weights file itself "
                            f"(e.g. {FID_WEIGHTS_URL.rsplit('/', 1)[-1]}).")
  if not os.path.exists(path):
    raise FileNotFoundError(f"Inception weights file {path!r} does not exist. Fix: download "
                            f"{FID_WEIGHTS_URL} (pytorch-fid's FID weights) and pass its path, or "
                            "its .safetensors conversion (python -m vqd_jax.convert inception).")
  if not path.endswith(".safetensors"):
    return _read_torch(path)
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  try:
    return dict(load_file(path))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Cannot read {path!r} as a .safetensors file ({e}). Fix: re-create it with "
                     "python -m vqd_jax.convert inception SRC.pth DST.safetensors.") from e


def inception_params(state: Mapping[str, Any], where: str = "the state dict") -> dict:
  """A ``fid_inception_v3()`` state dict (or the wrapper's) -> float32 Flax params of
  :class:`FIDInceptionV3`; a ValueError naming ``where`` when it does not fit."""
  state = standard_layout(state)
  check_state_dict(state, where)
  state = {k: np.asarray(v, np.float32) for k, v in state.items()}
  return sd.state_dict_to_params(state, param_shapes(), what=where)


def load_inception_params(path: str | os.PathLike) -> dict:
  """Flax params of :class:`FIDInceptionV3` from a weight file (see :func:`read_state_dict`)."""
  return inception_params(read_state_dict(path), where=repr(os.fspath(path)))


def load_inception(path: str | os.PathLike) -> InceptionFeatures:
  """:class:`~vqd_jax.evaluation.inception.InceptionFeatures` from pytorch-fid's weight file
  (``.safetensors``, or ``.pth``/``.pt`` through ``torch.load(weights_only=True)``)."""
  return InceptionFeatures(load_inception_params(path))


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu()
    value = value.float() if value.is_floating_point() else value
    return value.numpy()
  return np.asarray(value)


def save_inception_safetensors(state_dict: Mapping[str, Any], dst: str | os.PathLike) -> str:
  """Writes a ``fid_inception_v3()`` state dict (torch tensors or numpy; the wrapper's keys are
  renamed) as float32 ``.safetensors`` in the standard layout, after checking it.

  Returns ``dst``; a ValueError naming ``dst`` and every problem when the state dict does not fit.
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  dst = os.fspath(dst)
  state = standard_layout({k: _to_numpy(v) for k, v in state_dict.items()})
  check_state_dict(state, f"the state dict to write to {dst!r}")
  if os.path.dirname(dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, dst,
            metadata={"format": "pt"})
  return dst
