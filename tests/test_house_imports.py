"""Import arrows point down: pure cores never import training, data, inference or a command line
(nor interop, except the text encoders' checkpoint loaders), and the inference path never imports
training, data or a command line.

Every import statement counts, at module level or inside a function (a lazy import is still an
arrow), as do ``importlib.import_module("...")`` calls with a literal name.
"""

import ast
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "vqd_jax"

CLI_MODULES = tuple(f"vqd_jax.{name}" for name in (
    "train", "sample", "encode", "evaluate", "bench", "convert", "quickstart")) + (
        "vqd_jax.benchmarks",)
PURE_CORES = ("layers", "diffusion", "transformer", "autoregressive", "ctf", "vqvae", "text")
# What each part of the package may not import (a module or anything under it).
FORBIDDEN = {
    **{core: ("vqd_jax.training", "vqd_jax.data", "vqd_jax.inference", "vqd_jax.interop")
       + CLI_MODULES for core in PURE_CORES},
    # ``vqd_jax.text.load_encoder`` is the public way to load a pretrained T5 / CLIP encoder, so
    # its loaders reach the weight converters of interop (which in turn stay below training).
    "text": ("vqd_jax.training", "vqd_jax.data", "vqd_jax.inference") + CLI_MODULES,
    "interop": ("vqd_jax.training", "vqd_jax.data") + CLI_MODULES,
    # The inference path: loading runs, building their networks, reading checkpoints.
    **{part: ("vqd_jax.training", "vqd_jax.data") + CLI_MODULES
       for part in ("inference", "build.py", "checkpoint.py")},
}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: pathlib.Path) -> list[tuple[int, str]]:
  """``(line, absolute module name)`` of every import in the file, relative ones resolved."""
  tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
  package = module_name(path).split(".")
  if path.name != "__init__.py":
    package = package[:-1]
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.extend((node.lineno, alias.name) for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package[:len(package) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      # `from vqd_jax import training` imports vqd_jax.training: count each name as a submodule.
      out.append((node.lineno, base))
      out.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == "import_module" and node.args
          and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
      out.append((node.lineno, node.args[0].value))
  return out


def is_under(name: str, module: str) -> bool:
  return name == module or name.startswith(module + ".")


def files_of(part: str) -> list[pathlib.Path]:
  target = PACKAGE / part
  if target.is_file():
    return [target]
  return sorted(target.rglob("*.py")) if target.is_dir() else []


def violations(part: str) -> list[str]:
  found = []
  for path in files_of(part):
    for line, name in imported_names(path):
      for forbidden in FORBIDDEN[part]:
        if is_under(name, forbidden):
          found.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
  return sorted(set(found))


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_arrows_point_down(part):
  if not files_of(part):
    pytest.skip(f"vqd_jax/{part} does not exist")
  found = violations(part)
  assert not found, (f"vqd_jax/{part} may not import {', '.join(FORBIDDEN[part])}; found:\n  "
                     + "\n  ".join(found))


def test_the_checker_sees_lazy_relative_and_dynamic_imports(tmp_path, monkeypatch):
  core = tmp_path / "vqd_jax" / "text"
  core.mkdir(parents=True)
  (core / "bad.py").write_text(
      "import importlib\n"
      "def f():\n"
      "  from ..training import loop\n"
      "  from vqd_jax import data\n"
      "  return importlib.import_module('vqd_jax.quickstart')\n", encoding="utf-8")
  monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "vqd_jax")
  found = violations("text")
  assert {f.split(" imports ")[1] for f in found} == {
      "vqd_jax.data", "vqd_jax.quickstart", "vqd_jax.training", "vqd_jax.training.loop"}
