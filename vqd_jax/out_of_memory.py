"""Running out of device memory, said as what to change instead of XLA's traceback.

XLA reports an allocation it cannot make as a ``RuntimeError`` (``jax.errors.JaxRuntimeError``)
whose message starts ``RESOURCE_EXHAUSTED``, at compile time or at the first step that needs the
memory. The command lines wrap their work in :func:`explained` so that a batch too large for the
device ends with one line naming the flags that fix it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# How XLA's backends word an allocation they cannot make.
MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


def is_out_of_memory(error: BaseException) -> bool:
  return isinstance(error, RuntimeError) and any(m in str(error) for m in MARKERS)


def message(what: str, error: BaseException, fixes: str) -> str:
  """``Error: WHAT ran out of device memory (XLA's first line). FIXES``."""
  lines = str(error).strip().splitlines() or [type(error).__name__]
  return f"Error: {what} ran out of device memory ({lines[0][:300]}). {fixes}"


@contextlib.contextmanager
def explained(what: str, fixes: str) -> Iterator[None]:
  """Inside, an out-of-memory error exits (``SystemExit``) with :func:`message`; any other
  error passes through unchanged."""
  try:
    yield
  except RuntimeError as e:
    if not is_out_of_memory(e):
      raise
    raise SystemExit(message(what, e, fixes)) from None


def batch_size_fix(batch_size: int) -> str:
  """The fix for a command that runs its device calls ``--batch-size`` examples at a time."""
  return f"Lower --batch-size (now {batch_size})."


def training_fixes(config) -> str:
  """What lowers a training run's memory, with its current values."""
  model = config.get("model", {})
  options = [f"Lower --config.train.batch_size (now {config.train.batch_size})"]
  if "remat" in model and not model.remat:
    options.append("set --config.model.remat=True")
  if "dtype" in model and model.dtype == "float32":
    options.append("compute in --config.model.dtype=bfloat16")
  options.append("or split the state over more devices (--config.mesh.fsdp=N)")
  return (", ".join(options) + ". `python -m vqd_jax.bench memory --config ...` shows the "
          "per-device bytes without training.")
