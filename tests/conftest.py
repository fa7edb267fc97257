"""Shared pytest setup.

XLA flags must be set before jax is imported anywhere, so they live here.
"""

import os

os.environ.setdefault("XLA_FLAGS", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tempfile  # noqa: E402

import jax  # noqa: E402
from absl import flags  # noqa: E402

# Tests build the same tiny programs many times over (every train run re-creates its task): a
# persistent compilation cache turns the repeats into cache hits.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("VQD_TEST_CACHE", os.path.join(tempfile.gettempdir(),
                                                                "vqd_jax_test_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# grain worker processes (and absl apps) read absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()
