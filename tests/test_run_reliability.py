"""Runs on preemptible machines: one writer per workdir (a real second process holds the lock, then
is killed), and NaN/inf updates are never applied nor saved ("stop" and "skip" modes)."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax import configs_io
from vqd_jax import checkpoint as ckpt_lib
from vqd_jax.training import loop, nonfinite, vqvae_task, workdir_lock

ROOT = Path(__file__).resolve().parents[1]
TINY = "configs/vqvae.py:tiny"


def _config(**overrides):
  config = configs_io.load_config(TINY)
  config.train.log_every = 1
  for key, value in overrides.items():
    configs_io.set_field(config, key, str(value))
  return config


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


# -- one writer per workdir --------------------------------------------------------------------


def _hold_in_subprocess(workdir):
  code = ("import sys, time; from vqd_jax.training.workdir_lock import WorkdirLock; "
          "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)")
  proc = subprocess.Popen([sys.executable, "-c", code, workdir], stdout=subprocess.PIPE,
                          text=True, cwd=ROOT)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_a_live_holder_refuses_a_second_trainer_and_its_killed_lock_is_taken_over(tmp_path,
                                                                                   caplog):
  """A real second process holds the lock, then is SIGKILLed."""
  workdir = str(tmp_path / "run")
  holder = _hold_in_subprocess(workdir)
  try:
    with pytest.raises(workdir_lock.WorkdirLockError) as err:
      loop.train_and_evaluate(_config(**{"train.num_steps": 2}), workdir)
    message = str(err.value)
    for part in (workdir, f"pid {holder.pid}", repr(socket.gethostname()), "another --workdir"):
      assert part in message
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))  # refused before writing
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # SIGKILL leaves the file behind: a stale lock naming a process that no longer runs.
  path = os.path.join(workdir, workdir_lock.LOCK_NAME)
  with open(path, encoding="utf-8") as f:
    assert json.load(f)["pid"] == holder.pid
  with caplog.at_level("WARNING"):
    with workdir_lock.hold(workdir):
      with open(path, encoding="utf-8") as f:
        assert json.load(f)["pid"] == os.getpid()
  assert any("stale lock" in r.getMessage() and f"pid {holder.pid}" in r.getMessage()
             for r in caplog.records)
  assert not os.path.exists(path)  # released at the end


def test_stale_lock_files_and_foreign_hosts(tmp_path, caplog):
  workdir = str(tmp_path)
  path = os.path.join(workdir, workdir_lock.LOCK_NAME)
  dead = _dead_pid()
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"pid": dead, "host": socket.gethostname(), "started": 0}, f)
  with caplog.at_level("WARNING"):
    with workdir_lock.WorkdirLock(workdir):
      with open(path, encoding="utf-8") as f:
        assert json.load(f)["pid"] == os.getpid()
      # The same process, a second time: the lock is taken, whoever asks.
      with pytest.raises(workdir_lock.WorkdirLockError, match=f"pid {os.getpid()}"):
        workdir_lock.WorkdirLock(workdir).acquire()
  assert any(f"pid {dead}" in r.message for r in caplog.records)
  assert not os.path.exists(path)
  # Another host's lock cannot be checked from here: refuse, and say how to clear it.
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"pid": 1234, "host": "some-other-host", "started": 0}, f)
  with pytest.raises(workdir_lock.WorkdirLockError,
                     match=r"'some-other-host'.*delete .*train\.lock"):
    workdir_lock.WorkdirLock(workdir).acquire()
  with workdir_lock.hold("gs://bucket/run"):  # object stores: no lock, nothing written
    pass


def test_the_command_line_prints_the_lock_error_without_a_traceback(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.WorkdirLock(workdir):
    out = subprocess.run([sys.executable, "-m", "vqd_jax.train", "--config", TINY, "--workdir",
                          workdir], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         check=False)
  assert out.returncode != 0
  assert f"in use by another training process: pid {os.getpid()}" in out.stderr
  assert "Traceback" not in out.stderr


# -- non-finite losses and gradients ---------------------------------------------------------


def _all_finite(tree):
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.inexact))


def _saved_states(workdir):
  """Every checkpoint of the run, restored without a model (orbax reads the saved structure)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  ckpt = ckpt_lib.Checkpointer(workdir)
  reader = ocp.CheckpointManager(ckpt.directory, options=ocp.CheckpointManagerOptions(
      read_only=True), item_names=ckpt_lib.ITEMS)
  states = {s: reader.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
            for s in ckpt.all_steps()}
  reader.close()
  return states


def _poison(monkeypatch):
  """The task's update turns NaN at steps 3, 5, 6 and 7 (1-based), as a diverging run makes it:
  at step 3 only the updated weights (the loss is still finite), then the loss too. One program
  for every test (its compilation is the slow part)."""
  original = vqvae_task.VQVAETask.train_step

  def poisoned(self, state, batch, key):
    new, metrics = original(self, state, batch, key)
    bad_weights = jnp.isin(new.step, jnp.asarray([3, 5, 6, 7]))
    bad_loss = jnp.isin(new.step, jnp.asarray([5, 6, 7]))
    params = jax.tree.map(lambda p: jnp.where(bad_weights, jnp.nan, p), new.params)
    loss = jnp.where(bad_loss, jnp.nan, metrics["loss"])
    return new.replace(params=params), dict(metrics, loss=loss)
  monkeypatch.setattr(vqvae_task.VQVAETask, "train_step", poisoned)


def test_stop_mode_stops_naming_the_step_and_never_saves_it(tmp_path, monkeypatch):
  _poison(monkeypatch)
  workdir = str(tmp_path / "run")
  # Checked at the log of step 4, before its checkpoint would be written.
  with pytest.raises(nonfinite.NonFiniteError,
                     match=r"at step 3 \(train.nonfinite='stop'\).*last good checkpoint is step 2"):
    loop.train_and_evaluate(_config(**{"train.log_every": 2}), workdir)
  states = _saved_states(workdir)
  assert sorted(states) == [2] and _all_finite(states[2])


def test_skip_mode_leaves_the_state_unchanged_counts_and_continues(tmp_path, monkeypatch):
  _poison(monkeypatch)
  workdir = str(tmp_path / "run")
  config = _config(**{"train.nonfinite": "skip", "train.ckpt_every": 1,
                      "train.keep_checkpoints": 10})
  metrics = loop.train_and_evaluate(config, workdir)
  assert np.isfinite(metrics["loss"])
  rows = {r["step"]: r for r in _rows(workdir)}
  assert sorted(rows) == [1, 2, 3, 4]
  assert [rows[s]["nonfinite_steps"] for s in (1, 2, 3, 4)] == [0, 0, 1, 0]
  assert "loss" not in rows[3] and all(np.isfinite(rows[s]["loss"]) for s in (1, 2, 4))
  states = _saved_states(workdir)
  assert sorted(states) == [1, 2, 3, 4] and all(_all_finite(s) for s in states.values())
  # Step 3's update was dropped: its params and optimizer state are step 2's.
  assert int(states[3]["step"]) == 3
  for name in ("params", "opt_state", "extra"):
    for a, b in zip(jax.tree.leaves(states[2][name]), jax.tree.leaves(states[3][name])):
      np.testing.assert_array_equal(a, b)


def test_skip_mode_stops_after_too_many_in_a_row(tmp_path, monkeypatch):
  _poison(monkeypatch)
  config = _config(**{"train.nonfinite": "skip", "train.max_nonfinite_steps": 2,
                      "train.num_steps": 8})
  with pytest.raises(nonfinite.NonFiniteError,
                     match=r"steps 5-7 \(3 steps in a row, more than "
                           r"train.max_nonfinite_steps=2\)"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
