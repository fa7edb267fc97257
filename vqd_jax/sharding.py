"""Device meshes and logical-axis sharding.

Models name their parameter axes logically ('embed', 'mlp', 'heads', ...); the config holds a rule
table mapping logical names to mesh axes ('data', 'fsdp', 'tensor'), as MaxText and the flax lm1b
example do. Changing parallelism is a config change, never a model change.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# Batch over every data-like axis (replicating it over fsdp is a classic mistake); weights sharded
# over fsdp on their model-width axis (the text width too: the cross-attention K/V kernels are a
# large share of the denoiser) and over tensor on heads/MLP/vocab.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("embed", "fsdp"),
    ("text_embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("timestep", None),
    ("length", None),
    ("norm", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("codebook", "fsdp"),
    ("code_dim", None),
    ("expert", None),  # expert denoisers: each device holds every expert (one runs per step)
)


def make_mesh(shape: dict[str, int] | None = None, devices: Sequence[jax.Device] | None = None
              ) -> Mesh:
  """A mesh with axes (data, fsdp, tensor); one entry may be -1 to take the remaining devices.

  Raises:
    ValueError: when the axis sizes do not multiply to the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = dict(shape or {"data": -1})
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"Unknown mesh axes {sorted(unknown)}; use {MESH_AXES}.")
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {shape}.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"Mesh {shape}: {len(devices)} devices are not divisible by the fixed axes' "
                       f"product {known}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
        f"Mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices but "
        f"{len(devices)} are available; make the axis sizes multiply to {len(devices)} or set one "
        "axis to -1.")
  try:
    from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
    grid = mesh_utils.create_device_mesh(sizes, devices)
  except Exception:  # CPU/odd topologies: fall back to a plain reshape.
    grid = np.asarray(devices).reshape(sizes)
  return Mesh(grid, MESH_AXES)


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
  """Rule table from config (a list of [logical, mesh axis or list or None]) or the defaults."""
  if not rules:
    return DEFAULT_RULES
  out = []
  for name, axes in rules:
    out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
  return tuple(out)


def strip_boxes(tree: Any) -> Any:
  """Replaces ``nn.Partitioned`` boxes by their values, without sharding constraints.

  (``nn.meta.unbox`` applies a constraint, which fails on abstract values outside ``jit``.)
  """
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def _mesh_axes_size(mesh_shape: Mapping[str, int], axes: Any) -> int:
  """Number of shards along one array dimension mapped to ``axes`` (a name, names or None)."""
  if axes is None:
    return 1
  names = (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh_shape[a] for a in names)


def leaf_partition_spec(leaf: Any, mesh_shape: Mapping[str, int], rules) -> tuple[P, list[str]]:
  """Mesh PartitionSpec of one (possibly boxed) leaf, and notes on the dimensions left unsharded.

  ``mesh_shape`` maps mesh axis names to sizes (``mesh.shape``). A dimension whose size its mesh
  axes do not divide is replicated instead: ``jit`` rejects such shardings, and the arrays concerned
  (e.g. the K+1-row token embedding over ``tensor``) are small enough not to need padding.
  """
  if isinstance(leaf, nn.LogicallyPartitioned):
    axes = list(nn.logical_to_mesh_axes(leaf.names, rules))
    names = leaf.names
  elif isinstance(leaf, nn.Partitioned):
    axes, names = list(leaf.names), leaf.names
  else:
    return P(), []
  shape = leaf.value.shape
  notes = []
  for dim, mesh_axes in enumerate(axes):
    shards = _mesh_axes_size(mesh_shape, mesh_axes)
    if shards > 1 and shape[dim] % shards:
      notes.append(f"{names[dim]}={shape[dim]} not divisible by {mesh_axes}={shards}")
      axes[dim] = None
  return P(*axes), notes


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a (possibly LogicallyPartitioned-boxed) abstract pytree; unboxed structure.

  Leaves without logical names are replicated, and so is any dimension whose size is not divisible
  by its mesh axes (logged once per call, naming the parameters).
  """
  fallbacks = []

  def one(path, leaf):
    spec, notes = leaf_partition_spec(leaf, mesh.shape, rules)
    if notes:
      fallbacks.append(f"{jax.tree_util.keystr(path)} ({'; '.join(notes)})")
    return NamedSharding(mesh, spec)

  shardings = jax.tree_util.tree_map_with_path(
      one, abstract_tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  if fallbacks:
    log.info("Replicating %d array dimension(s) that the mesh does not divide: %s",
             len(fallbacks), ", ".join(fallbacks))
  return shardings


def on_first_local_device(abstract_tree: Any) -> Any:
  """``ShapeDtypeStruct`` leaves placed whole on this process's first device, for restoring.

  A checkpoint's saved layout may name devices of another topology (written by 2 CPU devices or a
  pod, read by one process with one device); restoring into this placement always works.
  """
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local),
                      strip_boxes(abstract_tree))


def bytes_per_device(tree: Any) -> tuple[int, int, int]:
  """``(bytes on the most loaded device, total bytes, fully replicated bytes)`` of array leaves.

  Works on concrete arrays and on ShapeDtypeStructs that carry a sharding.
  """
  per_device, total, fully_replicated = 0, 0, 0
  for leaf in jax.tree.leaves(tree):
    nbytes = math.prod(leaf.shape) * leaf.dtype.itemsize
    shard = math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
    total += nbytes
    per_device += shard
    fully_replicated += nbytes if shard == nbytes else 0
  return per_device, total, fully_replicated


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over the data-like axes; the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


@functools.lru_cache(maxsize=None)
def process_batch_slot(mesh: Mesh) -> tuple[int, int]:
  """``(slot, slots)``: this process loads block ``slot`` of ``slots`` equal blocks of each batch.

  The block is the rows that this process's devices hold under :func:`batch_sharding`, so that
  ``global_batch`` assembles every global batch in the same row order for any number of processes.
  On meshes from :func:`make_mesh` with one block per host it is ``(process_index, process_count)``;
  processes whose devices hold the same rows (the batch replicated across them over ``tensor``) get
  the same slot and load the same examples.
  """
  shards = _mesh_axes_size(mesh.shape, ("data", "fsdp"))
  index_map = batch_sharding(mesh).addressable_devices_indices_map((shards,))
  rows = sorted({index[0].start or 0 for index in index_map.values()})
  count = len(rows)
  if rows != list(range(rows[0], rows[0] + count)) or rows[0] % count or shards % count:
    raise ValueError(
        f"Process {jax.process_index()} holds batch rows {rows} of {shards}, not one contiguous "
        "block: order the mesh's data/fsdp axes so that each host's devices are adjacent "
        "(vqd_jax.sharding.make_mesh does).")
  return rows[0] // count, shards // count


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-host numpy batch -> global arrays sharded over the batch axes (multi-host aware).

  ``local_batch`` holds block ``slot`` of ``slots`` of the global batch (see
  :func:`process_batch_slot`).
  """
  sharding = batch_sharding(mesh)
  shards = _mesh_axes_size(mesh.shape, ("data", "fsdp"))
  _, slots = process_batch_slot(mesh)
  out = {}
  for k, v in local_batch.items():
    v = np.asarray(v)
    rows = v.shape[0] * slots
    if rows % shards:
      raise ValueError(f"The global batch of {rows} rows cannot be split over the mesh's "
                       f"data x fsdp = {shards} shards; make train.batch_size a multiple of "
                       f"{shards}.")
    out[k] = jax.make_array_from_process_local_data(sharding, v, (rows,) + v.shape[1:])
  return out
