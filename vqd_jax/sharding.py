"""Device meshes and logical-axis sharding.

Models name their parameter axes logically ('embed', 'mlp', 'heads', ...); the config holds a rule
table mapping logical names to mesh axes ('data', 'fsdp', 'tensor'), as MaxText and the flax lm1b
example do. Changing parallelism is a config change, never a model change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Batch over every data-like axis (replicating it over fsdp is a classic mistake); weights sharded
# over fsdp on their model-width axis and over tensor on heads/MLP/vocab.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("embed", "fsdp"),
    ("text_embed", None),
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


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a (possibly LogicallyPartitioned-boxed) abstract pytree; unboxed structure.

  Leaves without logical names are replicated.
  """
  specs = nn.get_partition_spec(abstract_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  return strip_boxes(shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over the data-like axes; the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-host numpy batch -> global arrays sharded over the batch axes (multi-host aware)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
