"""What the checkpoint folder holds, and whether what comes back from disk is what was saved.

orbax (0.11+) writes a step into ``<step>.orbax-checkpoint-tmp*`` and, once every item is on disk,
writes ``commit_success.txt`` and the commit time into ``_CHECKPOINT_METADATA``, then renames the
folder to ``<step>`` (on object stores, where renames are not atomic, the commit file alone marks
it). A step folder is *complete* when it carries both marks; anything else is a save that did not
finish (preemption, a full disk, a partial copy).

orbax stores arrays without checksums: a flipped byte inside a compressed chunk decodes to
different numbers without any error. So every save also stores one 32-bit checksum per array,
computed on the device from the array's bits, and every restore recomputes and compares them.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

log = logging.getLogger(__name__)

COMMIT_FILE = "commit_success.txt"
STEP_METADATA = "_CHECKPOINT_METADATA"
TMP_MARK = ".orbax-checkpoint-tmp"
_GOLDEN = 0x9E3779B1  # odd: index * golden spreads positions over all 32 bits


@dataclasses.dataclass
class StepScan:
  """The step folders of a checkpoint directory, sorted by step."""

  complete: list[int]
  incomplete: list[int]  # named like a step, but without the commit marks
  temporary: list[epath.Path]  # orbax's unfinished ``*.orbax-checkpoint-tmp*`` folders


def step_path(directory: str, step: int) -> epath.Path:
  return epath.Path(directory) / str(step)


def is_complete(path: epath.Path) -> bool:
  """Whether the step folder ``path`` carries orbax's commit marks (see the module docstring)."""
  return (path / COMMIT_FILE).exists() and (path / STEP_METADATA).exists()


def scan(directory: str) -> StepScan:
  """Sorts the folders of ``directory`` into complete, incomplete and temporary steps."""
  out = StepScan([], [], [])
  root = epath.Path(directory)
  if not root.exists():
    return out
  for path in root.iterdir():
    if TMP_MARK in path.name:
      out.temporary.append(path)
    elif path.name.isdigit() and path.is_dir():
      (out.complete if is_complete(path) else out.incomplete).append(int(path.name))
  out.complete.sort()
  out.incomplete.sort()
  return out


def tmp_step_name(path: epath.Path) -> str:
  """``"step 4"`` for orbax's ``4.orbax-checkpoint-tmp-123`` (the folder name if it has no step)."""
  head = path.name.split(TMP_MARK)[0]
  return f"step {head}" if head.isdigit() else path.name


# Files every complete step holds besides the array data (orbax 0.11+, OCDBT arrays).
EXPECTED_FILES = ("state/_METADATA", "state/manifest.ocdbt", "data/metadata", "config/metadata")


def missing_files(path: epath.Path) -> list[str]:
  """Which of :data:`EXPECTED_FILES` the step folder ``path`` lacks (full paths)."""
  return [str(path / name) for name in EXPECTED_FILES if not (path / name).exists()]


def move_aside(path: epath.Path, reason: str) -> epath.Path:
  """Renames ``path`` to ``<name>.<reason>-<unix time>[-n]``, which orbax does not take for a
  step."""
  stem = f"{path.name}.{reason}-{int(time.time())}"
  target, n = path.parent / stem, 1
  while target.exists():  # moved twice within a second
    target, n = path.parent / f"{stem}-{n}", n + 1
  path.rename(target)
  return target


def _leaf_key(path: tuple[Any, ...]) -> str:
  """``params/encoder/kernel``: the same name for a field of a TrainState and of a plain dict."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def _bits_checksum(x: jax.Array) -> jax.Array:
  """uint32 sum of the array's bits times odd position weights: any one changed element (any
  bit) changes the sum, and moved elements do too."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)  # 8 bytes: a trailing [2]
  index = jnp.zeros(bits.shape, jnp.uint32)
  stride = 1
  for dim in reversed(range(bits.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, dim) * np.uint32(stride)
    stride = (stride * bits.shape[dim]) % (1 << 32)
  weights = index * np.uint32(_GOLDEN) * np.uint32(2) + np.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)


_tree_checksums = jax.jit(lambda tree: jax.tree.map(_bits_checksum, tree))


def checksums(tree: Any) -> dict[str, str]:
  """``{leaf name: 8 hex digits}`` of every array in ``tree`` (computed where the arrays live)."""
  sums = jax.device_get(_tree_checksums(tree))
  return {_leaf_key(path): f"{int(v):08x}"
          for path, v in jax.tree_util.tree_flatten_with_path(sums)[0]}


def mismatched(saved: dict[str, str], tree: Any) -> list[str]:
  """Names of the arrays of ``tree`` whose checksum differs from ``saved`` (names it lacks are
  not checked: checkpoints written before checksums, or parts of a state)."""
  now = checksums(tree)
  return [name for name, value in now.items() if name in saved and saved[name] != value]


def is_disk_full(error: BaseException) -> bool:
  """Whether ``error`` or an exception it was raised from is ENOSPC (tensorstore only says so in
  its message)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
  return out


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       sections: tuple[str, ...] = ("stage", "model", "text")) -> list[str]:
  """``"model.width: 32 in the checkpoint, 64 now"`` for the fields of ``sections`` that differ."""
  old, new = _flat(saved), _flat(current)
  keys = sorted(k for k in set(old) | set(new) if k.split(".")[0] in sections)
  return [f"{k}: {old.get(k, '(absent)')!r} in the checkpoint, {new.get(k, '(absent)')!r} now"
          for k in keys if old.get(k) != new.get(k)]
