"""Running a row-wise function (a denoiser call) over a batch in blocks, inside ``jax.jit``.

Two kinds of blocks, both exact (each row's result is what the whole-batch call gives it):

* ``in_row_chunks``: consecutive blocks of a few rows, one after another (``lax.map``). On CPU a
  2-row block keeps XLA's attention logits in cache (2-2.5x faster per row at 4-8 rows).
* ``in_row_shards``: the rows split over a 1-D mesh of host CPU devices (``shard_map``), one
  shard per core, each shard then run in chunks. See ``vqd_jax.cpu_devices`` for why and the
  measured gain.

Every array argument has the rows as axis 0; ``None`` entries pass through.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

ROW_AXIS = "rows"


def _pad_rows(a: jax.Array | None, rows: int) -> jax.Array | None:
  """``a`` with its last row repeated up to ``rows`` rows (None stays None)."""
  if a is None or a.shape[0] == rows:
    return a
  return jnp.concatenate([a, jnp.repeat(a[-1:], rows - a.shape[0], axis=0)])


def in_row_chunks(fn: Callable[..., jax.Array], chunk_rows: int | None, *arrays: Any
                  ) -> jax.Array:
  """``fn(*arrays)`` on consecutive blocks of ``chunk_rows`` rows, one block after another.

  The last block is padded by repeating the final row; the padded outputs are dropped.
  """
  rows = arrays[0].shape[0]
  if chunk_rows is None or rows <= chunk_rows:
    return fn(*arrays)
  blocks = -(-rows // chunk_rows)

  def split(a):
    if a is None:
      return None
    a = _pad_rows(a, blocks * chunk_rows)
    return a.reshape((blocks, chunk_rows) + a.shape[1:])

  out = jax.lax.map(lambda block: fn(*block), tuple(split(a) for a in arrays))
  return out.reshape((blocks * chunk_rows,) + out.shape[2:])[:rows]


def host_row_mesh(devices: list[jax.Device] | None = None) -> Mesh | None:
  """A 1-D ``rows`` mesh of the default backend's devices when they are several CPU devices.

  None on accelerators (they take the batch in one block), on a single CPU device, in
  multi-process runs (a sampling call on one host must not wait for the others) and under an
  ambient mesh (``jax.set_mesh``: training previews), whose sharding rules already spread the
  batch and would name axes a ``rows`` mesh lacks.
  """
  devices = jax.devices() if devices is None else devices
  if (len(devices) < 2 or devices[0].platform != "cpu" or jax.process_count() > 1
      or not jax.sharding.get_abstract_mesh().empty):
    return None
  return Mesh(np.array(devices), (ROW_AXIS,))


def replicate(tree: Any, mesh: Mesh | None) -> Any:
  """``tree`` on every device of ``mesh`` (the weights a row-sharded call closes over).

  With ``mesh`` None, plain ``jax.device_put`` (numpy leaves become device arrays). A no-op for
  leaves already placed so.
  """
  return jax.device_put(tree, None if mesh is None else NamedSharding(mesh, P()))


def in_row_shards(fn: Callable[..., jax.Array], mesh: Mesh | None, chunk_rows: int | None,
                  *arrays: Any) -> jax.Array:
  """``fn(*arrays)`` with the rows split evenly over ``mesh`` (then ``in_row_chunks`` per shard).

  Rows are padded to a multiple of the device count by repeating the last row (the padded
  outputs are dropped). With ``mesh`` None, or fewer rows than devices (a shard would only hold
  padding), this is ``in_row_chunks``. ``fn`` may close over replicated values (the weights).
  """
  rows = arrays[0].shape[0]
  if mesh is None or rows < mesh.size:
    return in_row_chunks(fn, chunk_rows, *arrays)
  padded = -(-rows // mesh.size) * mesh.size
  arrays = tuple(_pad_rows(a, padded) for a in arrays)
  specs = tuple(None if a is None else P(ROW_AXIS) for a in arrays)

  def per_shard(*shard):
    # Inside the shard the program is per device: logical sharding constraints (Flax rules that
    # a training loop may have left active) name mesh axes that do not exist here.
    with nn.logical_axis_rules(()):
      return in_row_chunks(fn, chunk_rows, *shard)

  # check_vma=False: fn closes over the (replicated) weights, which shard_map cannot annotate.
  sharded = jax.shard_map(per_shard, mesh=mesh, in_specs=specs, out_specs=P(ROW_AXIS),
                          check_vma=False)
  return sharded(*arrays)[:rows]
