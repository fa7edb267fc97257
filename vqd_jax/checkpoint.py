"""Checkpoints: orbax CheckpointManager with the train state, the data iterator state and the config.

Training writes and resumes them (``vqd_jax.training.loop``); inference reads the parameters alone
(``restore_subtree``), so loading a run needs neither an optimizer nor any training code.

A checkpoint that exists but cannot be restored is an error, never a silent fresh start: users lose
days when a trainer quietly reinitialises (maxdiffusion's bare ``except:`` is the cautionary tale).
Every error names the step, its folder (or file) and what to do. Only *complete* steps count (see
``checkpoint_health``): a save that never finished is skipped with a warning, and every restore is
checked against the checksums stored with the step.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from vqd_jax import checkpoint_health as health

PyTree = Any
ITEMS = ("state", "data", "config", "checksums")
RESTORED_MARKER = "restore_step.json"  # the train.restore_step last applied
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into the current model/config, or a save failed."""


def _damaged_files(message: str, step_dir: str) -> str:
  """The files of ``step_dir`` that are missing, or else those an orbax/tensorstore error message
  names (files rather than folders), as a sentence; '' when there are none."""
  missing = health.missing_files(epath.Path(step_dir))
  if missing:
    return f" Missing: {', '.join(missing)}."
  named = [m for m in re.findall(re.escape(step_dir) + r"/[^\s\"'<>,\\]+", message)
           if not m.endswith("/")]
  return f" The damaged file: {named[0]}." if named else ""


class Checkpointer:
  """Asynchronous keep-N checkpoints of ``{state, data, config, checksums}`` under
  ``workdir/checkpoints``.

  ``state`` is the train state pytree (saved sharded by every host), ``data`` the JSON state
  of the data iterator, ``config`` the run's config as JSON, for humans and for ``sample``, and
  ``checksums`` one checksum per array of ``state`` (``checkpoint_health.checksums``).
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    """``read_only``: for loading; creates nothing on disk and refuses to save."""
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints") if "://" not in workdir \
        else workdir.rstrip("/") + "/checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           read_only=read_only,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    self._in_flight: int | None = None  # the step of a save that may still be writing

  def _step_dir(self, step: int) -> str:
    return str(health.step_path(self.directory, step))

  def all_steps(self) -> list[int]:
    """The complete steps on disk (a save in flight, or one that never finished, is not one)."""
    return health.scan(self.directory).complete

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def _older_hint(self, step: int) -> str:
    older = [s for s in self.all_steps() if s < step]
    if not older:
      return "No older complete checkpoint exists: start afresh with a new --workdir."
    return (f"Restore an older step with --config.train.restore_step={older[-1]} (complete steps: "
            f"{older}), or start afresh with a new --workdir.")

  # -- choosing the step to resume from ----------------------------------------------------------

  def resume_step(self, requested: int | None = None) -> int | None:
    """The step training resumes from (None: no checkpoint, start afresh).

    ``requested`` None picks the latest complete step; a newer incomplete step folder is moved
    aside with a warning. An explicit ``requested`` step must be complete; the steps after it are
    moved aside (kept, renamed ``<step>.superseded-<time>``) so that training can write them
    anew, once: re-running the same command later resumes from the latest step. Unfinished orbax
    temporary folders are deleted. Every process must call this.
    """
    found = health.scan(self.directory)
    if jax.process_index() == 0:
      latest = found.complete[-1] if found.complete else None
      for tmp in found.temporary:
        log.warning("Checkpoint %s in %s never finished saving (orbax's temporary folder); %s. "
                    "Deleting it.", health.tmp_step_name(tmp), self.directory,
                    f"restoring step {latest}" if latest is not None else "no complete step")
        tmp.rmtree()
      if requested is None:
        step = self._skip_incomplete(found)
      else:
        step = self._go_back_to(found, int(requested))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices("vqd_jax checkpoint resume_step")
      found = health.scan(self.directory)
      step = found.complete[-1] if found.complete else None
    self._manager.reload()
    return step

  def _skip_incomplete(self, found: health.StepScan) -> int | None:
    latest = found.complete[-1] if found.complete else None
    newer = [s for s in found.incomplete if latest is None or s > latest]
    if newer and latest is None:
      raise CheckpointError(
          f"Checkpoint step(s) {newer} in {self.directory} are incomplete (no "
          f"{health.COMMIT_FILE} or {health.STEP_METADATA}: their save never finished) and no "
          "complete checkpoint exists. Delete them to start afresh, or use a new --workdir. "
          "Refusing to silently start from scratch.")
    for step in newer:
      moved = health.move_aside(health.step_path(self.directory, step), "incomplete")
      log.warning("Checkpoint step %d in %s is incomplete (its save never finished: no %s or %s); "
                  "restoring the previous complete step %d instead. The incomplete folder was "
                  "moved to %s.", step, self.directory, health.COMMIT_FILE, health.STEP_METADATA,
                  latest, moved)
    return latest

  def _go_back_to(self, found: health.StepScan, step: int) -> int | None:
    # A preempted job re-runs its command: restore_step must not throw away its new steps again.
    marker = epath.Path(self.directory) / RESTORED_MARKER
    if marker.exists() and json.loads(marker.read_text()).get("restore_step") == step:
      log.info("train.restore_step=%d was applied by an earlier run (%s); resuming from the "
               "latest complete step. Delete that file to go back to step %d again.", step,
               marker, step)
      return self._skip_incomplete(found)
    if step not in found.complete:
      raise CheckpointError(
          f"train.restore_step={step}: there is no complete checkpoint step {step} in "
          f"{self.directory} (complete steps: {found.complete or 'none'}). Pick one of those, or "
          "leave train.restore_step unset to resume from the latest.")
    for later in sorted(s for s in found.complete + found.incomplete if s > step):
      moved = health.move_aside(health.step_path(self.directory, later), "superseded")
      log.warning("train.restore_step=%d: moved the later checkpoint step %d to %s (training "
                  "writes that step anew).", step, later, moved)
    marker.write_text(json.dumps({"restore_step": step}))
    return step

  # -- saving ------------------------------------------------------------------------------------

  def save(self, step: int, state: PyTree, data_state: dict[str, Any] | None,
           config_json: dict[str, Any], *, force: bool = False) -> bool:
    """Starts an asynchronous save; returns whether a save was started.

    A failure of the previous asynchronous save surfaces here (or at :meth:`wait`) as a
    :class:`CheckpointError` naming that step.
    """
    self._finish_in_flight()
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state or {}),
        config=ocp.args.JsonSave(config_json),
        checksums=ocp.args.JsonSave(health.checksums(state)))
    try:
      started = self._manager.save(step, args=args, force=force)
    except Exception as e:  # orbax raises many types; all mean the same to the user.
      raise self._save_error(step, e) from e
    self._in_flight = step if started else None
    return started

  def _finish_in_flight(self) -> None:
    step, self._in_flight = self._in_flight, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e

  def _save_error(self, step: int | None, error: Exception) -> CheckpointError:
    what = f"step {step}" if step is not None else "a checkpoint"
    if health.is_disk_full(error):
      head = f"No space left on device while saving {what} to {self.directory}"
    else:
      head = f"Saving {what} to {self.directory} failed ({type(error).__name__}: {error})"
    previous = [s for s in self.all_steps() if step is None or s < step]
    if previous:
      tail = (f"the previous checkpoint step {previous[-1]} is intact. Free space (or lower "
              "train.keep_checkpoints, or use a --workdir on a larger disk), then re-run the same "
              f"command to resume from step {previous[-1]}.")
    else:
      tail = "no earlier checkpoint exists, so re-running starts from step 0."
    return CheckpointError(f"{head}; {tail}")

  # -- restoring ---------------------------------------------------------------------------------

  def _restore(self, step: int, args: ocp.args.Composite, why: str, manager=None) -> Any:
    try:
      return (manager or self._manager).restore(step, args=args)
    except Exception as e:  # orbax raises many types; all mean the same to the user.
      message = str(e)
      # tensorstore appends a page of JSON spec: its first line says what went wrong.
      short = message.strip().splitlines()[0][:400] if message.strip() else ""
      raise CheckpointError(
          f"Checkpoint step {step} in {self.directory} exists but cannot be restored "
          f"({type(e).__name__}: {short}).{_damaged_files(message, self._step_dir(step))} {why}"
      ) from e

  def saved_checksums(self, step: int) -> dict[str, str]:
    """``{array name: checksum}`` stored with ``step`` (empty for a step saved without them)."""
    if not self._has_checksums(step):
      return {}
    restored = self._restore(step, ocp.args.Composite(checksums=ocp.args.JsonRestore()),
                             "Its checksums cannot be read.")
    return dict(restored["checksums"] or {})

  def _has_checksums(self, step: int) -> bool:
    return (health.step_path(self.directory, step) / "checksums").exists()

  def _verify(self, step: int, tree: PyTree, saved: dict[str, str]) -> None:
    bad = health.mismatched(saved, tree)
    if bad:
      raise CheckpointError(
          f"Checkpoint step {step} is damaged: the restored values of {len(bad)} array(s) "
          f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) differ from those saved "
          f"(checksum mismatch), so a file under {self._step_dir(step)}/state was altered on "
          f"disk. {self._older_hint(step)} Refusing to train from damaged weights.")

  def _check_same_stage(self, step: int, saved: dict[str, Any], config_json: dict[str, Any]
                        ) -> None:
    """Refuses a checkpoint written by another stage (``config_json`` is the current config)."""
    if saved.get("stage") != config_json.get("stage"):
      raise CheckpointError(
          f"Checkpoint step {step} in {self.directory} was written by a {saved.get('stage')!r} "
          f"run, but this config trains {config_json.get('stage')!r}. Each stage needs its own "
          "--workdir: pick a new one (a later stage reads the earlier one through its "
          "vqvae_workdir / init_from fields).")

  def restore(self, step: int, abstract_state: PyTree, config_json: dict[str, Any] | None = None
              ) -> tuple[PyTree, dict[str, Any]]:
    """Restores ``step`` into the structure, shapes and shardings of ``abstract_state``.

    With ``config_json`` (the current config) a checkpoint of another stage is refused up front,
    and a failure names the model fields that differ from the checkpoint's config.
    """
    differences = []
    if config_json is not None:
      saved = self.restore_config(step)
      self._check_same_stage(step, saved, config_json)
      differences = health.config_differences(saved, config_json)
    items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    if self._has_checksums(step):
      items["checksums"] = ocp.args.JsonRestore()
    if differences:
      changed = f"These fields differ from its saved config: {'; '.join(differences[:5])}. "
    elif health.missing_files(health.step_path(self.directory, step)):
      changed = ""  # the error names them
    else:
      changed = ("The config probably changed since it was written (compare with its saved "
                 "config.json), or a file of the step is damaged. ")
    restored = self._restore(step, ocp.args.Composite(**items), (
        f"{changed}{self._older_hint(step)} Refusing to silently start from scratch."))
    if "checksums" in items:
      self._verify(step, restored["state"], dict(restored["checksums"] or {}))
    return restored["state"], dict(restored["data"] or {})

  def restore_subtree(self, step: int, abstract: dict[str, PyTree]) -> dict[str, PyTree]:
    """Restores only the fields of the saved state named in ``abstract`` (e.g. ``ema_params``).

    ``abstract`` maps field names of the saved state to ShapeDtypeStructs (with shardings); the
    optimizer state and everything else stay on disk.
    """
    items = dict(state=ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True))
    if self._has_checksums(step):
      items["checksums"] = ocp.args.JsonRestore()
    # A reader of its own: a manager that saved the state holds the saving handler for it, which
    # cannot read part of a tree.
    reader = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        read_only=True), item_names=ITEMS)
    try:
      restored = self._restore(step, ocp.args.Composite(**items), manager=reader, why=(
          f"Its {sorted(abstract)} do not fit the model its saved config.json describes, or a "
          "file of the step is damaged."))
    finally:
      reader.close()
    sums = dict(restored["checksums"] or {}) if "checksums" in items else {}
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
    self._verify(step, restored, sums)
    return restored

  def restore_config(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    restored = self._restore(step, ocp.args.Composite(config=ocp.args.JsonRestore()), (
        f"Its config.json is unreadable. {self._older_hint(step)}"))
    return dict(restored["config"])

  def reached_preemption(self, step: int) -> bool:
    """True when the cluster announced a preemption (TPU/GKE); the loop then saves and exits."""
    return bool(self._manager.reached_preemption(step))

  def wait(self) -> None:
    """Waits for the save in flight; its failure raises :class:`CheckpointError`."""
    self._finish_in_flight()

  def close(self) -> None:
    try:
      self._finish_in_flight()
    finally:
      self._manager.close()
