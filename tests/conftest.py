"""Shared pytest setup.

XLA flags must be set before jax is imported anywhere, so they live here.
"""

import os

os.environ.setdefault("XLA_FLAGS", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

# grain worker processes (and absl apps) read absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()
