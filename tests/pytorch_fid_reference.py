"""pytorch-fid, the FID reference, imported beside the CPU torch.

pytorch-fid imports torchvision, and the torchvision wheel on the package index is built for the
CUDA torch: beside the CPU torch its compiled operators fail to register when ``torchvision`` is
imported, and transformers and diffusers, which import torchvision whenever it is installed, then
fail too. So both live in a folder of their own, off the import path (``.fid_reference`` at the
repository root, or ``$VQD_FID_REFERENCE``), installed with

    pip install --no-deps --target .fid_reference pytorch-fid torchvision

The FID network and ``calculate_frechet_distance`` need only torchvision's Python modules
(``models.inception`` and ``transforms``): this helper imports them under a bare ``torchvision``
package whose ``__init__`` (the part that loads the compiled operators) never runs, imports
pytorch-fid, then takes the folder and the bare package off the import path again.
"""

from __future__ import annotations

import os
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = "pip install --no-deps --target .fid_reference pytorch-fid torchvision"


def _folder() -> str:
  return os.environ.get("VQD_FID_REFERENCE", os.path.join(ROOT, ".fid_reference"))


def _bare_package(name: str, path: str) -> types.ModuleType:
  module = types.ModuleType(name)
  module.__path__ = [path]
  sys.modules[name] = module
  return module


def _import_with_bare_torchvision(folder: str) -> tuple[types.ModuleType, types.ModuleType]:
  root = os.path.join(folder, "torchvision")
  package = _bare_package("torchvision", root)
  from torchvision import version  # pylint: disable=import-outside-toplevel
  package.__version__ = version.__version__
  models = _bare_package("torchvision.models", os.path.join(root, "models"))
  package.models = models
  import torchvision.models.inception as inception_v3  # pylint: disable=import-outside-toplevel
  models.inception = inception_v3
  models.inception_v3 = inception_v3.inception_v3
  import torchvision.transforms as transforms  # pylint: disable=import-outside-toplevel
  package.transforms = transforms
  from pytorch_fid import fid_score, inception  # pylint: disable=import-outside-toplevel
  return inception, fid_score


def load_pytorch_fid() -> tuple[types.ModuleType, types.ModuleType]:
  """Returns pytorch-fid's ``inception`` and ``fid_score`` modules, or skips saying what to install."""
  pytest.importorskip("torch", reason="pytorch-fid needs torch (pip install -e \".[test]\")")
  if "pytorch_fid.fid_score" in sys.modules:
    return sys.modules["pytorch_fid.inception"], sys.modules["pytorch_fid.fid_score"]
  folder = _folder()
  if not all(os.path.isdir(os.path.join(folder, name)) for name in ("pytorch_fid", "torchvision")):
    pytest.skip(f"pytorch-fid and torchvision are not in {folder} ({INSTALL})")
  sys.path.insert(0, folder)
  try:
    return _import_with_bare_torchvision(folder)
  finally:
    sys.path.remove(folder)
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]  # pytorch-fid keeps its references; nothing else may find them
