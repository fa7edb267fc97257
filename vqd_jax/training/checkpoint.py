"""Checkpoints: orbax CheckpointManager with the train state, the data iterator state and the config.

A checkpoint that exists but cannot be restored is an error, never a silent fresh start: users lose
days when a trainer quietly reinitialises (maxdiffusion's bare ``except:`` is the cautionary tale).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from vqd_jax.training.state import TrainState


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into the current model/config."""


class Checkpointer:
  """Asynchronous keep-N checkpoints of ``{state, data, config}`` under ``workdir/checkpoints``.

  ``state`` is the :class:`TrainState` pytree (saved sharded by every host), ``data`` the JSON state
  of the data iterator and ``config`` the run's config as JSON, for humans and for ``sample``.
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints") if "://" not in workdir \
        else workdir.rstrip("/") + "/checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data", "config"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: TrainState, data_state: dict[str, Any] | None,
           config_json: dict[str, Any], *, force: bool = False) -> bool:
    """Starts an asynchronous save; returns whether a save was started."""
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state or {}),
        config=ocp.args.JsonSave(config_json))
    return self._manager.save(step, args=args, force=force)

  def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores ``step`` into the structure, shapes and shardings of ``abstract_state``."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                              data=ocp.args.JsonRestore())
    try:
      restored = self._manager.restore(step, args=args)
    except Exception as e:  # orbax raises many types; all mean the same to the user.
      raise CheckpointError(
          f"Checkpoint step {step} in {self.directory} exists but cannot be restored into the "
          f"current model ({type(e).__name__}: {e}). The config probably changed since it was "
          "written (compare with its saved config.json); use a new --workdir to start afresh, or "
          "delete the checkpoint if it is corrupt. Refusing to silently start from scratch.") from e
    return restored["state"], dict(restored["data"] or {})

  def restore_config(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    return dict(self._manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])

  def reached_preemption(self, step: int) -> bool:
    """True when the cluster announced a preemption (TPU/GKE); the loop then saves and exits."""
    return bool(self._manager.reached_preemption(step))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def restore_params(workdir: str, abstract_state: TrainState, step: int | None = None
                   ) -> tuple[TrainState, int]:
  """Restores the latest (or given) train state of a finished or running run, e.g. for sampling."""
  ckpt = Checkpointer(workdir, async_save=False)
  step = ckpt.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(
        f"No checkpoint under {ckpt.directory}. Train first: python -m vqd_jax.train --workdir "
        f"{workdir} ...")
  state, _ = ckpt.restore(step, abstract_state)
  ckpt.close()
  return state, step


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings when present) for every array leaf of ``tree``."""
  def leaf(x):
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(leaf, tree)
