"""Shared pytest setup.

XLA flags must be set before jax is imported anywhere, so they live here.
"""

import os

from jax_test_env import FAST_COMPILE_FLAGS

os.environ.setdefault("XLA_FLAGS", FAST_COMPILE_FLAGS)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Loaded before any test: tensorflow_datasets imports its dependencies inside etils' lazy-import
# context, and if a ResourceWarning from a collected object is formatted while that context is
# active, the warnings module's first `import tracemalloc` gets lazy stand-ins for its own imports
# and fails ("'LazyModule' object is not callable"), failing whichever test is running (seen once
# in CI, in test_data_convert).
import tracemalloc  # noqa: E402,F401  pylint: disable=unused-import

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

from jax_test_env import use_persistent_compile_cache  # noqa: E402

use_persistent_compile_cache(jax)

# In CI a skipped reference test is a failure (strict_reference.py).
pytest_plugins = ["strict_reference"]

# grain worker processes (and absl apps) read absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def tiny_vq_dir(tmp_path_factory):
  """Run directory of an untrained ``configs/vqvae.py:tiny`` autoencoder (diffusion tests)."""
  from vqd_jax import configs_io  # pylint: disable=import-outside-toplevel
  from vqd_jax.training import vqvae_task  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("tiny_vq") / "run")
  vqvae_task.save_untrained(workdir, configs_io.load_config("configs/vqvae.py:tiny"))
  return workdir


@pytest.fixture(scope="session")
def tiny_run(tiny_vq_dir, tmp_path_factory):
  """Run directory of a ``configs/diffusion.py:tiny`` denoiser trained 4 steps (sampling tests)."""
  from vqd_jax import configs_io  # pylint: disable=import-outside-toplevel
  from vqd_jax.training import loop  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("tiny_run") / "dm")
  config = configs_io.load_config("configs/diffusion.py:tiny", [f"vqvae_workdir={tiny_vq_dir}"])
  loop.train_and_evaluate(config, workdir)
  return workdir
