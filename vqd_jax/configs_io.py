"""Loading ``configs/<name>.py[:preset]`` files outside absl (quickstart, encode, tests)."""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence

import ml_collections

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve(path: str) -> str:
  """A config path as given, or relative to the repository root (for installed packages)."""
  if os.path.exists(path):
    return path
  candidate = os.path.join(_REPO_ROOT, path)
  if os.path.exists(candidate):
    return candidate
  raise FileNotFoundError(f"Config file {path!r} not found (looked here and in {_REPO_ROOT}).")


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """``"configs/diffusion.py:shapes"`` -> its ``get_config("shapes")``, then ``key=value`` overrides."""
  path, _, arg = spec.partition(":")
  path = resolve(path)
  module_spec = importlib.util.spec_from_file_location(
      f"vqd_config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for item in overrides:
    key, _, value = item.partition("=")
    _set(config, key, value)
  return config


def _set(config: ml_collections.ConfigDict, dotted: str, value: str) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for p in parents:
    node = node[p]
  old = node[leaf]
  if isinstance(old, bool):
    truth = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    if value.lower() not in truth:
      raise ValueError(f"{dotted}={value!r}: expected a boolean (true/false, 1/0, yes/no).")
    node[leaf] = truth[value.lower()]
  elif isinstance(old, int):
    node[leaf] = int(value)
  elif isinstance(old, float):
    node[leaf] = float(value)
  elif isinstance(old, (list, tuple)):
    try:
      parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"{dotted}={value!r}: expected a Python list such as [1.0, 0.0].") from e
    if not isinstance(parsed, (list, tuple)):
      raise ValueError(f"{dotted}={value!r}: expected a list, like its default {list(old)}.")
    node[leaf] = type(old)(parsed)
  else:
    node[leaf] = value
