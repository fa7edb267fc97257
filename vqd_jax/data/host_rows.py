"""Per-host slicing that keeps the global batch independent of the number of processes.

Host ``h`` of ``P`` reads rows ``[h*b, (h+1)*b)`` of every global batch of ``B = P*b`` examples, so
``jax.make_array_from_process_local_data`` (which concatenates host blocks in process order)
assembles exactly the batch a single process would read, row for row. A strided slice
(``[h::P]``) holds the same examples in another row order, which changes every per-row random draw
(timesteps, noise, caption drop) and so the losses.
"""

from __future__ import annotations

from typing import Any

import grain


class HostRowsMapDataset(grain.MapDataset):
  """Host ``index``'s elements: its ``rows`` rows of every global batch of ``rows * count``.

  Element ``i`` is parent element ``(i // rows * count + index) * rows + i % rows``.
  """

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, rows: int, index: int, count: int):
    super().__init__(parent)
    if rows <= 0 or not 0 <= index < count:
      raise ValueError(f"Need rows > 0 and 0 <= index < count, got rows={rows}, index={index}, "
                       f"count={count}.")
    self._rows, self._index, self._count = rows, index, count
    self._length = (len(parent) // (rows * count)) * rows

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, i: int) -> int:
    batch, row = divmod(i, self._rows)
    return (batch * self._count + self._index) * self._rows + row

  def __getitem__(self, i: Any):
    if isinstance(i, slice):
      return self.slice(i)
    return self._parent[self._parent_index(i)]

  def __str__(self) -> str:
    return f"HostRowsMapDataset(rows={self._rows}, index={self._index}, count={self._count})"
