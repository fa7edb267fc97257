"""Test-process JAX settings shared by conftest.py and the multi-device worker processes."""

import os
import tempfile

# Test programs are tiny and run in milliseconds; compiling them dominates the suite, and these
# flags cut LLVM's share (conftest.py sets them for every test process and its subprocesses).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def use_persistent_compile_cache(jax) -> None:
  """Tests build the same tiny programs many times over (every train run re-creates its task): a
  persistent compilation cache, shared by all test processes, turns the repeats into cache hits."""
  jax.config.update("jax_compilation_cache_dir",
                    os.environ.get("VQD_TEST_CACHE", os.path.join(tempfile.gettempdir(),
                                                                  "vqd_jax_test_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
