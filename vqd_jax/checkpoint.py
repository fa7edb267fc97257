"""Checkpoints: orbax CheckpointManager with the train state, the data iterator state and the config.

Training writes and resumes them (``vqd_jax.training.loop``); inference reads the parameters alone
(``restore_subtree``), so loading a run needs neither an optimizer nor any training code.

A checkpoint that exists but cannot be restored is an error, never a silent fresh start: users lose
days when a trainer quietly reinitialises (maxdiffusion's bare ``except:`` is the cautionary tale).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any



class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into the current model/config."""


class Checkpointer:
  """Asynchronous keep-N checkpoints of ``{state, data, config}`` under ``workdir/checkpoints``.

  ``state`` is the train state pytree (saved sharded by every host), ``data`` the JSON state
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

  def save(self, step: int, state: PyTree, data_state: dict[str, Any] | None,
           config_json: dict[str, Any], *, force: bool = False) -> bool:
    """Starts an asynchronous save; returns whether a save was started."""
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state or {}),
        config=ocp.args.JsonSave(config_json))
    return self._manager.save(step, args=args, force=force)

  def _restore(self, step: int, args: ocp.args.Composite, why: str, manager=None) -> Any:
    try:
      return (manager or self._manager).restore(step, args=args)
    except Exception as e:  # orbax raises many types; all mean the same to the user.
      raise CheckpointError(f"Checkpoint step {step} in {self.directory} exists but cannot be "
                            f"restored ({type(e).__name__}: {e}). {why}") from e

  def restore(self, step: int, abstract_state: PyTree) -> tuple[PyTree, dict[str, Any]]:
    """Restores ``step`` into the structure, shapes and shardings of ``abstract_state``."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                              data=ocp.args.JsonRestore())
    restored = self._restore(step, args, (
        "The config probably changed since it was written (compare with its saved config.json); "
        "use a new --workdir to start afresh, or delete the checkpoint if it is corrupt. "
        "Refusing to silently start from scratch."))
    return restored["state"], dict(restored["data"] or {})

  def restore_subtree(self, step: int, abstract: dict[str, PyTree]) -> dict[str, PyTree]:
    """Restores only the fields of the saved state named in ``abstract`` (e.g. ``ema_params``).

    ``abstract`` maps field names of the saved state to ShapeDtypeStructs (with shardings); the
    optimizer state and everything else stay on disk.
    """
    args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True))
    # A reader of its own: a manager that saved the state holds the saving handler for it, which
    # cannot read part of a tree.
    reader = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        read_only=True), item_names=("state", "data", "config"))
    try:
      restored = self._restore(step, args, manager=reader, why=(
          f"Its {sorted(abstract)} do not fit the model its saved config.json describes."))
    finally:
      reader.close()
    restored = dict(restored["state"])
    wrong = [f"{jax.tree_util.keystr(path)}: {got.shape} on disk, {want.shape} in the model"
             for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(abstract)[0],
                                          jax.tree.leaves(restored))
             if tuple(got.shape) != tuple(want.shape)]
    if wrong or jax.tree.structure(restored) != jax.tree.structure(abstract):
      raise CheckpointError(
          f"Checkpoint step {step} in {self.directory} does not fit the model its saved "
          f"config.json describes ({'; '.join(wrong[:3]) or 'different parameter names'}); the "
          "run folder may be damaged or written by another version.")
    return restored

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
