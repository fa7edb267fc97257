"""Metrics to TensorBoard event files, a JSONL file and a progress bar; process 0 only.

The loop hands over device arrays; they are fetched here, every ``log_every`` steps, so training never
blocks on its results step by step.

A resumed run continues the history of the run it resumes: ``metrics.jsonl`` loses the lines after
the restored step (a killed run logged steps that its last checkpoint does not hold, and they are
trained again), rewritten atomically. TensorBoard event files are append-only and tensorboardX
cannot delete events, so a resumed writer starts its file with a purge marker (``purge_step``, a
``SessionLog.START`` event): TensorBoard then hides the older events at or after that step.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import struct
import time
from typing import Any

import jax
import numpy as np

from vqd_jax.training import nonfinite

log = logging.getLogger(__name__)


def truncate_jsonl(path: str, last_step: int) -> int:
  """Keeps the lines of ``path`` with ``step <= last_step`` (and drops unreadable ones, such as a
  line cut short by a kill); rewrites the file atomically. Returns the number of lines dropped."""
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= last_step:
      kept.append(line if line.endswith("\n") else line + "\n")
  dropped = len(lines) - len(kept)
  if dropped:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)  # a kill during the rewrite leaves the old file, never half of it
  return dropped


class MetricWriter:
  """Writes scalars to ``workdir/tensorboard`` and ``workdir/metrics.jsonl`` (process 0 only).

  ``resume_step``: the step the run starts from (0 for a fresh start); the history after it is
  dropped (see the module docstring). None appends to whatever is there.
  """

  def __init__(self, workdir: str, enabled: bool | None = None, resume_step: int | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      purge_step = None
      if resume_step is not None:
        dropped = truncate_jsonl(path, resume_step)
        if dropped:
          log.info("Dropped %d lines after step %d from %s: they are trained again.", dropped,
                   resume_step, path)
        purge_step = resume_step + 1
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      # Event files are named by the second they open in: the suffix keeps a quick restart from
      # overwriting the previous file, and sorts after it.
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30,
                               purge_step=purge_step, filename_suffix=f".{time.time_ns()}")
      self._jsonl = open(path, "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """``image``: uint8 ``[H, W, 3]``."""
    if self.enabled:
      self._tb.add_image(name, image, step, dataformats="HWC")

  def flush(self) -> None:
    """Puts everything written so far on disk (TensorBoard buffers for up to 30 s)."""
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


class MetricBuffer:
  """Accumulates per-step device metrics and averages them when asked (one host sync per log)."""

  def __init__(self):
    self._pending: list[dict[str, jax.Array]] = []
    self._t0 = time.perf_counter()
    self._steps = 0

  def add(self, metrics: dict[str, jax.Array]) -> None:
    self._pending.append(metrics)
    self._steps += 1

  def flush(self) -> dict[str, float]:
    """Means over the buffered steps plus ``steps_per_sec``.

    Steps flagged ``nonfinite`` (their update was dropped) are left out of the means and counted
    in ``nonfinite_steps``.
    """
    if not self._pending:
      return {}
    fetched = jax.device_get(self._pending)
    flag = nonfinite.FLAG
    good = [m for m in fetched if not int(m.get(flag, 0))]
    out = {k: float(np.mean([m[k] for m in good])) for k in fetched[0] if k != flag and good}
    if flag in fetched[0]:
      out["nonfinite_steps"] = float(len(fetched) - len(good))
    now = time.perf_counter()
    out["steps_per_sec"] = self._steps / max(now - self._t0, 1e-9)
    self._pending, self._steps, self._t0 = [], 0, now
    return out


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
  """A tqdm bar with rates, or a no-op stand-in on non-zero processes."""
  if not enabled:
    class _Null:
      def update(self, n=1): del n
      def set_postfix(self, *a, **k): del a, k
      def close(self): pass
    return _Null()
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
              mininterval=1.0)


def _tfrecords(path: str):
  """The records of a TFRecord file (length, its CRC, data, its CRC; CRCs not checked)."""
  with open(path, "rb") as f:
    data = f.read()
  at = 0
  while at + 12 <= len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    yield data[at + 12:at + 12 + length]
    at += 12 + length + 4


def tensorboard_scalars(workdir: str, tag: str) -> dict[int, list[float]]:
  """``{step: [values]}`` of ``tag`` as TensorBoard shows the run: a SessionLog.START event at
  step s hides the events at steps >= s that earlier files hold (its purge on restart). A step
  shown twice has two values."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  seen: dict[int, list[float]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))):
    for record in _tfrecords(path):
      event = event_pb2.Event.FromString(record)
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        seen = {s: v for s, v in seen.items() if s < event.step}
      for value in event.summary.value:
        if value.tag == tag:
          seen.setdefault(int(event.step), []).append(float(value.simple_value))
  return seen
