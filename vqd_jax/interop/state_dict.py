"""PyTorch state dicts <-> Flax params, by name.

Flax submodules in vqd_jax are named after the public PyTorch checkpoints, so converting is mechanical:

* a torch key ``transformer_blocks.3.attn1.to_out.0.weight`` becomes the Flax path
  ``("transformer_blocks_3", "attn1", "to_out_0", <leaf>)``: a numeric component is joined to the name
  before it with ``_`` (Flax module names cannot be bare numbers);
* the leaf ``weight`` becomes whichever of ``kernel`` (Dense/Conv), ``scale`` (LayerNorm/GroupNorm) or
  ``embedding`` (Embed) the Flax module has at that path, and the array is laid out for it: Dense
  kernels are transposed (torch ``[out, in]`` -> Flax ``[in, out]``), conv kernels go from
  ``[O, I, kh, kw]`` to ``[kh, kw, I, O]``;
* real renames (legacy attention names, the official repo's names) are a table of regular expressions
  applied to the torch key first.

Loading never executes code: safetensors directly, ``.bin``/``.pt`` only through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.traverse_util
import numpy as np

RenameRules = Sequence[tuple[str, str]]

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                 "diffusion_pytorch_model.bin", "pytorch_model.bin")


def find_weights_file(directory: str | os.PathLike) -> str:
  """The weights file of a diffusers/transformers component folder (safetensors preferred)."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"Component folder {directory!r} does not exist.")
  for name in _WEIGHT_FILES:
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(
      f"No weights in {directory!r}: expected one of {', '.join(_WEIGHT_FILES)}. Sharded checkpoints "
      "are not supported; re-save the component with save_pretrained(safe_serialization=True).")


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` or torch ``.bin``/``.pt`` file (or a component folder) into numpy arrays."""
  path = os.fspath(path)
  if os.path.isdir(path):
    path = find_weights_file(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"Weights file {path!r} does not exist.")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    try:
      return dict(load_file(path))
    except Exception as e:  # bf16 tensors have no numpy dtype: fall back to torch below.
      if "bfloat16" not in str(e).lower():  # safetensors raises its own types for damaged files
        raise ValueError(f"Weights file {path!r} cannot be read ({type(e).__name__}: {e}).") \
            from None
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"Reading {path!r} needs PyTorch (pip install torch); or convert the file "
                      "to .safetensors.") from e
  if path.endswith(".safetensors"):
    from safetensors.torch import load_file as load_torch  # pylint: disable=import-outside-toplevel
    tensors = load_torch(path)
  else:
    # weights_only=True: a pickle can run arbitrary code, this refuses anything but tensors.
    tensors = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(tensors, Mapping) and "state_dict" in tensors:
      tensors = tensors["state_dict"]
  return {k: v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
          for k, v in tensors.items()}


def torch_key_to_path(key: str) -> tuple[str, ...]:
  """``a.b.0.c.weight`` -> ``("a", "b_0", "c", "weight")``."""
  out: list[str] = []
  for part in key.split("."):
    if part.isdigit() and out:
      out[-1] = f"{out[-1]}_{part}"
    else:
      out.append(part)
  return tuple(out)


def _apply_rules(key: str, rules: RenameRules) -> str:
  for pattern, repl in rules:
    key = re.sub(pattern, repl, key)
  return key


def _to_flax_layout(leaf: str, value: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
  if leaf == "kernel" and value.ndim == 2:
    value = value.T
  elif leaf == "kernel" and value.ndim == 4:
    value = value.transpose(2, 3, 1, 0)
  elif leaf == "kernel" and value.ndim == 3:  # Conv1d [O, I, k] -> [k, I, O]
    value = value.transpose(2, 1, 0)
  if tuple(value.shape) != tuple(target_shape):
    value = value.reshape(target_shape) if value.size == int(np.prod(target_shape)) else value
  return value


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], template: Mapping[str, Any],
                         rules: RenameRules = (), ignore: Sequence[str] = (),
                         what: str = "checkpoint") -> dict[str, Any]:
  """Converts a torch state dict to a Flax params tree shaped like ``template``.

  Args:
    state_dict: torch key -> array.
    template: the Flax params (or their ``jax.eval_shape``) the result must match, unboxed.
    rules: ``(regex, replacement)`` pairs applied in order to every torch key before conversion.
    ignore: regexes of torch keys to drop (buffers such as the official ``attn2.mask``).
    what: a name for error messages.

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped parameter.
  """
  flat_template = flax.traverse_util.flatten_dict(dict(template))
  out: dict[tuple[str, ...], np.ndarray] = {}
  unexpected, misshaped = [], []
  for key, value in state_dict.items():
    if any(re.search(p, key) for p in ignore):
      continue
    path = torch_key_to_path(_apply_rules(key, rules))
    prefix, leaf = path[:-1], path[-1]
    if leaf == "weight":
      candidates = [prefix + (n,) for n in ("kernel", "scale", "embedding")]
    else:
      candidates = [path]
    target = next((c for c in candidates if c in flat_template), None)
    if target is None:
      unexpected.append(key)
      continue
    shape = tuple(flat_template[target].shape)
    converted = _to_flax_layout(target[-1], np.asarray(value), shape)
    if tuple(converted.shape) != shape:
      misshaped.append(f"{key}: {tuple(np.shape(value))} vs expected {shape} at {'/'.join(target)}")
      continue
    dtype = getattr(flat_template[target], "dtype", np.float32)  # arrays or ShapeDtypeStructs
    out[target] = converted.astype(dtype)
  missing = sorted("/".join(p) for p in flat_template if p not in out)
  problems = []
  if missing:
    problems.append(f"missing in {what}: {missing[:20]}{' ...' if len(missing) > 20 else ''}")
  if unexpected:
    problems.append(f"not used from {what}: {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
  if misshaped:
    problems.append(f"shape mismatch: {misshaped[:20]}")
  if problems:
    raise ValueError(f"Cannot convert {what} to vqd_jax params; " + "; ".join(problems) +
                     ". Check that the model config matches the checkpoint's config.json.")
  return flax.traverse_util.unflatten_dict(out)


def params_to_state_dict(params: Mapping[str, Any], rules: RenameRules = ()) -> dict[str, np.ndarray]:
  """The inverse of :func:`state_dict_to_params` (for export); ``rules`` map Flax-derived torch keys
  to the checkpoint's names."""
  out = {}
  for path, value in flax.traverse_util.flatten_dict(dict(params)).items():
    value = np.asarray(value)
    leaf = path[-1]
    if leaf == "kernel" and value.ndim == 2:
      value = value.T
    elif leaf == "kernel" and value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)
    elif leaf == "kernel" and value.ndim == 3:
      value = value.transpose(2, 1, 0)
    torch_leaf = "weight" if leaf in ("kernel", "scale", "embedding") else leaf
    parts = []
    for p in path[:-1]:
      m = re.fullmatch(r"(.*)_(\d+)", p)
      parts.extend([m.group(1), m.group(2)] if m else [p])
    key = _apply_rules(".".join(parts + [torch_leaf]), rules)
    out[key] = np.ascontiguousarray(value)
  return out
