"""A plain (non-editable) ``pip install`` of the repository works from any directory.

The package is installed into a fresh virtualenv that sees this interpreter's packages (nothing is
downloaded: ``--no-deps --no-build-isolation --no-index``), then, from a directory unrelated to the
repository, ``python -m vqd_jax.train`` trains the tiny presets with the paths a user types
(``--config configs/vqvae.py:tiny``), found in the installed package, and refuses a preset that
names no data.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "README.md", "vqd_jax", "configs")


def _run(cmd, cwd, env, timeout=600):
  out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout, check=False)
  return out.returncode, out.stdout + out.stderr


def _can_build_without_network() -> bool:
  """setuptools that builds wheels by itself (>= 70.1) or with the ``wheel`` package."""
  try:
    import setuptools  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
  if (major, minor) >= (70, 1):
    return True
  try:
    import wheel  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
  """``(python of a venv holding a non-editable install, environment for its commands)``."""
  if not _can_build_without_network():
    pytest.skip("needs setuptools >= 70.1 (or setuptools with wheel) to build without network")
  base = tmp_path_factory.mktemp("pip_install")
  source = base / "source"  # a copy: building writes build/ and *.egg-info next to setup.py
  source.mkdir()
  for name in SOURCES:
    src = ROOT / name
    if src.is_dir():
      shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      shutil.copy2(src, source / name)
  env_dir = base / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                  str(env_dir)], check=True, timeout=120)
  python = env_dir / "bin" / "python"
  site_dir = subprocess.run(
      [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      capture_output=True, text=True, check=True).stdout.strip()
  # This interpreter's packages (jax, flax, pip, setuptools ...), after the venv's own: when this
  # interpreter is itself a virtualenv, --system-site-packages alone would not reach them.
  parents = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
  Path(site_dir, "_vqd_test_parent_env.pth").write_text("\n".join(sorted(parents)) + "\n")
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  env.update(
      PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
      # The test suite's compilation cache (tests/jax_test_env.py): reruns skip XLA compiles.
      JAX_COMPILATION_CACHE_DIR=os.environ.get(
          "VQD_TEST_CACHE", os.path.join(tempfile.gettempdir(), "vqd_jax_test_cache")),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  # --ignore-installed: an editable vqd_jax visible through the parent packages is left alone.
  code, out = _run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                    "--no-index", "--ignore-installed", "--no-cache-dir", source], base, env)
  assert code == 0, out[-5000:]
  return python, env


def test_installed_package_trains_both_stages_from_another_directory(venv, tmp_path):
  python, env = venv
  work = tmp_path / "elsewhere"  # no configs/ and no vqd_jax/ here
  work.mkdir()
  code, out = _run([python, "-c", "import vqd_jax, vqd_jax.configs_io as c; "
                    "print(vqd_jax.__file__); print(c.resolve('configs/diffusion.py'))"], work, env)
  assert code == 0, out
  module_file, config_file = out.strip().splitlines()[-2:]
  prefix = str(python.parent.parent)
  assert module_file.startswith(prefix) and not module_file.startswith(str(ROOT)), module_file
  assert config_file.startswith(prefix), config_file

  code, out = _run([python, "-m", "vqd_jax.train", "--help"], work, env)
  assert code == 1 and "--config" in out and "--workdir" in out, out[-3000:]  # absl: exit 1

  # A preset without data stops before writing anything and says what to set.
  code, out = _run([python, "-m", "vqd_jax.train", "--config", "configs/diffusion.py:B",
                    "--workdir", "runs/b"], work, env)
  assert code != 0 and "--config.data.source=tfds" in out and not (work / "runs").exists(), out

  code, out = _run([python, "-m", "vqd_jax.train", "--config", "configs/vqvae.py:tiny",
                    "--workdir", "runs/vq"], work, env)
  assert code == 0, out[-5000:]
  code, out = _run([python, "-m", "vqd_jax.train", "--config", "configs/diffusion.py:tiny",
                    "--config.vqvae_workdir=runs/vq", "--workdir", "runs/dm"], work, env)
  assert code == 0, out[-5000:]
  for stage in ("vq", "dm"):
    assert (work / "runs" / stage / "metrics.jsonl").exists(), stage
