"""Non-finite losses and gradients: never applied, never saved, never trained through silently.

Inside the jitted step (:func:`guarded`): when the loss, the gradient norm or any updated
parameter is NaN or inf, the step keeps the previous params, optimizer state, EMA and task state
(only ``step`` advances, so step numbers, data and keys stay those of an uninterrupted run) and
reports ``nonfinite = 1`` in its metrics.

On the host (:class:`NonfiniteMonitor`): the flags are fetched only at log steps and before every
checkpoint save, where the host waits on the device anyway. ``train.nonfinite = "stop"`` raises
:class:`NonFiniteError` naming the steps and the last good checkpoint; ``"skip"`` counts the skipped
steps (the ``nonfinite_steps`` metric) and raises only after more than
``train.max_nonfinite_steps`` of them in a row.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

log = logging.getLogger(__name__)

MODES = ("stop", "skip")
FLAG = "nonfinite"


def safety_defaults() -> dict[str, Any]:
  """The ``train`` fields of every stage's config for resuming and for non-finite values.

  restore_step: the checkpoint step to resume from (None: the latest complete one); later steps are
  moved aside. nonfinite: "stop" or "skip" (see the module docstring). max_nonfinite_steps: the
  most skipped steps in a row that "skip" tolerates.
  """
  return dict(restore_step=ml_collections.config_dict.placeholder(int), nonfinite="stop",
              max_nonfinite_steps=20)


def check_config(train: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a train.nonfinite or train.max_nonfinite_steps that cannot work."""
  if train.nonfinite not in MODES:
    raise ValueError(f"train.nonfinite must be one of {MODES}, got {train.nonfinite!r}.")
  if int(train.max_nonfinite_steps) < 0:
    raise ValueError("train.max_nonfinite_steps must be >= 0, got "
                     f"{train.max_nonfinite_steps}.")


class NonFiniteError(FloatingPointError):
  """Training produced NaN/inf losses or gradients (nothing of them was saved)."""


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def guarded(step_fn: Callable, state: Any, *args) -> tuple[Any, dict[str, jax.Array]]:
  """``step_fn(state, *args)`` whose update is dropped when anything it produced is non-finite.

  Returns the new state (or the old one with ``step`` advanced) and the step's metrics with
  ``nonfinite`` (int32 0/1) added. Jittable; the check costs one read of the updated parameters.
  """
  new, metrics = step_fn(state, *args)
  # Finite gradients (their global norm) give finite optimizer moments, and finite parameters a
  # finite EMA: checking the loss, the gradient norm and the parameters covers the whole state.
  # Checking every array of the state instead made XLA CPU compile the step 10x slower.
  checked = {k: metrics[k] for k in ("loss", "grad_norm") if k in metrics}
  ok = jnp.logical_and(_all_finite(checked), _all_finite(new.params))
  # One conditional rather than a `where` per array: the same result, and half the compile time
  # of the whole step on XLA CPU (the selects fused into every update made fusion slow).
  kept = jax.lax.cond(ok, lambda n, o: n, lambda n, o: o, new.replace(step=state.step), state)
  return kept.replace(step=new.step), {**metrics, FLAG: jnp.logical_not(ok).astype(jnp.int32)}


def _span(steps: list[int]) -> str:
  return f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"


class NonfiniteMonitor:
  """Collects the per-step ``nonfinite`` flags and acts on them when :meth:`check` is called.

  Args:
    mode: "stop" or "skip".
    max_in_row: "skip" raises after more than this many non-finite steps in a row.
    last_checkpoint: returns the step of the last complete checkpoint (None if there is none),
      after waiting for a save in flight; only called to write the error.
  """

  def __init__(self, mode: str, max_in_row: int, last_checkpoint: Callable[[], int | None]):
    check_config(ml_collections.ConfigDict(dict(nonfinite=mode, max_nonfinite_steps=max_in_row)))
    self.mode, self.max_in_row = mode, int(max_in_row)
    self._last_checkpoint = last_checkpoint
    self._pending: list[tuple[int, jax.Array]] = []
    self._run: list[int] = []  # the current run of consecutive non-finite steps
    self.skipped = 0

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    """Records the flag of ``step`` (1-based, as the loop counts) without fetching it."""
    self._pending.append((step, metrics[FLAG]))

  def check(self) -> None:
    """Fetches the pending flags; raises :class:`NonFiniteError` as the mode says."""
    if not self._pending:
      return
    flags = jax.device_get([flag for _, flag in self._pending])
    steps = [step for step, _ in self._pending]
    self._pending = []
    bad = [s for s, f in zip(steps, flags) if int(f)]
    for step, flag in zip(steps, flags):
      self._run = self._run + [step] if int(flag) else []
      if self.mode == "skip" and len(self._run) > self.max_in_row:
        raise self._error(self._run, f"{len(self._run)} steps in a row, more than "
                                     f"train.max_nonfinite_steps={self.max_in_row}")
    if not bad:
      return
    self.skipped += len(bad)
    if self.mode == "stop":
      raise self._error(bad, "train.nonfinite='stop'")
    log.warning("Skipped %s: non-finite loss or gradients (%d skipped so far).", _span(bad),
                self.skipped)

  def _error(self, steps: list[int], why: str) -> NonFiniteError:
    last = self._last_checkpoint()
    saved = (f"The last good checkpoint is step {last}; re-running the same command resumes from "
             "it" if last is not None else "No checkpoint was saved yet; re-running starts afresh")
    return NonFiniteError(
        f"Non-finite (NaN/inf) loss or gradients at {_span(steps)} ({why}). Those updates were not "
        f"applied, so no checkpoint holds them. {saved}. Lower optim.lr or raise "
        "optim.warmup_steps (or check the data of those steps); --config.train.nonfinite=skip "
        "skips such steps instead of stopping.")
