"""Config files ``configs/<stage>.py[:preset]`` and ``--config.<field>=<value>`` overrides.

A config path is looked up as given (relative to the working directory), then among the configs
installed with the package (the repository's ``configs/`` folder ships as ``vqd_jax.configs``), then
in the source checkout vqd_jax runs from. So ``--config configs/diffusion.py:tiny`` works from any
directory after ``pip install``.

Every command line overrides fields the way absl/ml_collections do in ``python -m vqd_jax.train``:
``--config.train.num_steps=500`` (the quickstart, with two configs, says ``--vqvae.<field>`` and
``--diffusion.<field>``). :func:`pop_override_flags` collects them from an argument list and
:func:`set_field` is the one parser of ``key=value``: the value takes the type of the field's
default (bool, int, float, list or tuple, else a string).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import math
import os
from collections.abc import Sequence

import ml_collections

CONFIGS_PACKAGE = "vqd_jax.configs"
_SOURCE_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TRUTH = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def config_dirs() -> list[str]:
  """Where configs are looked up after the working directory: installed, then the checkout."""
  dirs = []
  try:
    spec = importlib.util.find_spec(CONFIGS_PACKAGE)
  except ImportError:
    spec = None
  if spec is not None and spec.submodule_search_locations:
    dirs.extend(spec.submodule_search_locations)
  checkout = os.path.join(_SOURCE_CHECKOUT, "configs")
  is_checkout = os.path.exists(os.path.join(_SOURCE_CHECKOUT, "setup.py"))
  if is_checkout and os.path.isdir(checkout) and checkout not in dirs:
    dirs.append(checkout)
  return dirs


def resolve(path: str) -> str:
  """The file ``path`` names: as given, else ``configs/<rest>`` (or a bare file name) in
  :func:`config_dirs`."""
  if os.path.exists(path):
    return path
  if os.path.isabs(path):
    raise FileNotFoundError(f"Config file {path!r} not found.")
  parts = os.path.normpath(path).split(os.sep)
  rest = parts[1:] if parts[0] == "configs" and len(parts) > 1 else parts
  searched = config_dirs()
  for root in searched:
    candidate = os.path.join(root, *rest)
    if os.path.exists(candidate):
      return candidate
  raise FileNotFoundError(f"Config file {path!r} not found (looked in {os.getcwd()} and in "
                          f"{', '.join(searched) or 'no installed configs'}).")


def resolve_spec(spec: str) -> str:
  """``"configs/diffusion.py:tiny"`` with its file part resolved (:func:`resolve`)."""
  path, sep, arg = spec.partition(":")
  return resolve(path) + sep + arg


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """``"configs/diffusion.py:shapes"`` -> its ``get_config("shapes")``, then ``key=value``
  overrides (``"train.num_steps=500"``).

  Raises:
    FileNotFoundError: no such config file.
    ValueError: naming the file, for one that fails to run or has no ``get_config``, a preset
      ``get_config`` refuses, or a bad override.
  """
  path, _, arg = spec.partition(":")
  path = resolve(path)
  module_spec = importlib.util.spec_from_file_location(
      f"vqd_config_{os.path.basename(path)[:-3]}", path)
  if module_spec is None or not path.endswith(".py"):
    raise ValueError(f"Config file {path!r} is not a Python file (configs/<stage>.py[:preset]).")
  module = importlib.util.module_from_spec(module_spec)
  try:  # the config file is the user's code: any error in it is a config error
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Config file {path!r} fails to load: {type(e).__name__}: {e}") from e
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"Config file {path!r} defines no get_config(); a config file returns its "
                     "ConfigDict from get_config(preset).")
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Config {spec!r}: {type(e).__name__}: {e}") from e
  apply_overrides(config, overrides)
  return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Applies ``"dotted.key=value"`` items in order (see :func:`set_field`)."""
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"Override {item!r} must look like field=value, e.g. train.num_steps=500.")
    set_field(config, key, value)


def set_field(config: ml_collections.ConfigDict, dotted: str, value: str) -> None:
  """Sets ``config.<dotted>`` from the text ``value``, typed like the field's current value.

  Raises:
    ValueError: naming the field, for a field the config lacks or a value of the wrong type.
  """
  node, name = field_parent(config, dotted, f"{dotted}={value!r}")
  node[name] = _parse(dotted, value, node[name])


def field_parent(config: ml_collections.ConfigDict, dotted: str, what: str | None = None
                 ) -> tuple[ml_collections.ConfigDict, str]:
  """``(the ConfigDict holding config.<dotted>, its last name)``.

  Raises:
    ValueError: ``"<what>: config.<path> has no field <name>; its fields: ..."``.
  """
  names = dotted.split(".")
  node, where = config, "config"
  for depth, name in enumerate(names):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      fields = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
      raise ValueError(f"{what or dotted}: {where} has no field {name!r}"
                       + (f"; its fields: {fields}." if fields else "."))
    if depth < len(names) - 1:
      node, where = node[name], f"{where}.{name}"
  return node, names[-1]


def _parse(dotted: str, value: str, old):
  if isinstance(old, bool):
    if value.lower() not in _TRUTH:
      raise ValueError(f"{dotted}={value!r}: expected a boolean (true/false, 1/0, yes/no).")
    return _TRUTH[value.lower()]
  if isinstance(old, (int, float)):
    try:
      return type(old)(value)
    except ValueError:
      raise ValueError(f"{dotted}={value!r}: expected {type(old).__name__} like its default "
                       f"{old!r}.") from None
  if isinstance(old, (list, tuple)):
    try:
      parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"{dotted}={value!r}: expected a Python list such as [1.0, 0.0].") from e
    if not isinstance(parsed, (list, tuple)):
      raise ValueError(f"{dotted}={value!r}: expected a list, like its default {list(old)}.")
    return type(old)(parsed)
  if old is None:  # e.g. sampling.purity_weight: a number, a list, or text
    try:
      return ast.literal_eval(value)
    except (ValueError, SyntaxError):
      return value
  return value


def pop_override_flags(argv: Sequence[str], prefixes: Sequence[str] = ("config",)
                       ) -> tuple[list[str], dict[str, list[str]]]:
  """Splits ``--<prefix>.<field>=<value>`` (or ``--<prefix>.<field> <value>``) out of ``argv``.

  Returns:
    ``(the other arguments, {prefix: ["field=value", ...]})`` in command-line order.
  """
  rest, found = [], {p: [] for p in prefixes}
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    prefix = next((p for p in prefixes if arg.startswith(f"--{p}.")), None)
    if prefix is None:
      rest.append(arg)
      i += 1
      continue
    key, sep, value = arg[len(prefix) + 3:].partition("=")
    if not sep:
      if i + 1 >= len(args):
        raise ValueError(f"{arg} needs a value: {arg}=VALUE.")
      value = args[i + 1]
      i += 1
    found[prefix].append(f"{key}={value}")
    i += 1
  return rest, found


def parse_args_with_overrides(parser, argv: Sequence[str] | None,
                              prefixes: Sequence[str] = ("config",)):
  """``(parser.parse_args(rest), {prefix: ["field=value", ...]})`` for a command line's argv
  (None: ``sys.argv[1:]``); a malformed override is the parser's usage error."""
  import sys  # pylint: disable=import-outside-toplevel
  try:
    rest, overrides = pop_override_flags(sys.argv[1:] if argv is None else argv, prefixes)
  except ValueError as e:
    parser.error(str(e))
  return parser.parse_args(rest), overrides


# -- argparse value types shared by the command lines ----------------------------------------------


def int_at_least(low: int, below: int | None = None):
  """An argparse ``type``: an integer ``low <= n`` (and ``< below`` when given)."""
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
      raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    if below is not None and value >= below:
      raise argparse.ArgumentTypeError(f"must be below {below}, got {value}")
    return value
  return parse


def finite_float(text: str) -> float:
  """An argparse ``type``: a finite number (not nan or inf)."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
  return value


def fraction(text: str) -> float:
  """An argparse ``type``: a number ``0 < r <= 1``."""
  value = finite_float(text)
  if not 0 < value <= 1:
    raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {value}")
  return value
