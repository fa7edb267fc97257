"""Metrics to TensorBoard event files, a JSONL file and a progress bar; process 0 only.

The loop hands over device arrays; they are fetched here, every ``log_every`` steps, so training never
blocks on its results step by step.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np


class MetricWriter:
  """Writes scalars to ``workdir/tensorboard`` and ``workdir/metrics.jsonl`` (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

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
    """Means over the buffered steps plus ``steps_per_sec``; raises on a non-finite loss."""
    if not self._pending:
      return {}
    fetched = jax.device_get(self._pending)
    out = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    now = time.perf_counter()
    out["steps_per_sec"] = self._steps / max(now - self._t0, 1e-9)
    self._pending, self._steps, self._t0 = [], 0, now
    if "loss" in out and not np.isfinite(out["loss"]):
      raise FloatingPointError(
          f"Training loss became {out['loss']}: lower optim.lr or raise optim.warmup_steps, then "
          "resume from the last checkpoint (it holds the last finite state).")
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
