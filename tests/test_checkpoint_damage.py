"""Damaged and foreign checkpoints written by the real loop, and saves that fail (a full disk): each
is a CheckpointError that names the step, the folder or file and the fix, never a fresh start; a
failed save leaves the previous step restorable. An unfinished latest step is skipped with a
warning, and a run killed between checkpoints resumes into metrics.jsonl and TensorBoard histories
that hold each step once, with the losses of an uninterrupted run."""

import errno
import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from orbax.checkpoint._src.path import atomicity

from vqd_jax import configs_io
from vqd_jax import checkpoint as ckpt_lib
from vqd_jax.training import loop, metrics
from vqd_jax.training.state import TrainState

TINY = "configs/vqvae.py:tiny"


def _config(spec=TINY, **overrides):
  config = configs_io.load_config(spec)
  config.train.log_every = 1
  for key, value in overrides.items():
    configs_io.set_field(config, key, str(value))
  return config


def _rows_of(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _steps_logged(workdir):
  return [row["step"] for row in _rows_of(workdir)]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  """A tiny autoencoder run with complete checkpoints at steps 2 and 4."""
  workdir = str(tmp_path_factory.mktemp("base") / "run")
  loop.train_and_evaluate(_config(), workdir)
  assert ckpt_lib.Checkpointer(workdir).all_steps() == [2, 4]
  return workdir


def _copy(base_run, tmp_path):
  # A fresh path per copy: tensorstore caches what it read by path within a process.
  workdir = str(tmp_path / "run")
  shutil.copytree(base_run, workdir)
  return workdir


def _state_files(workdir, step=4):
  return sorted(p for p in glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**"),
                                     recursive=True)
                if os.path.isfile(p) and "/d/" in p)


def _truncate(workdir):
  path = max(_state_files(workdir), key=os.path.getsize)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip_bytes(workdir):
  """One byte in the middle of the largest file: array values, which orbax stores without a
  checksum (they decode to other numbers)."""
  path = max(_state_files(workdir), key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x5A]))


def _drop_metadata(workdir):
  os.remove(os.path.join(workdir, "checkpoints", "4", "state", "_METADATA"))


# damage -> (what it does, what the error says)
DAMAGE = {"truncated": (_truncate, "cannot be restored"),
          "flipped": (_flip_bytes, "checksum mismatch"),
          "missing_metadata": (_drop_metadata, "Missing: {step}/state/_METADATA.")}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_step_is_an_error_naming_the_step_folder_and_fix(base_run, tmp_path,
                                                                          damage):
  workdir = _copy(base_run, tmp_path)
  corrupt, says = DAMAGE[damage]
  corrupt(workdir)
  with pytest.raises(ckpt_lib.CheckpointError) as err:
    loop.train_and_evaluate(_config(), workdir)
  message = str(err.value)
  assert "step 4" in message and os.path.join(workdir, "checkpoints") in message
  assert says.format(step=os.path.join(workdir, "checkpoints", "4")) in message
  assert "--config.train.restore_step=2" in message and "new --workdir" in message
  # Nothing was trained or rewritten.
  assert _steps_logged(workdir) == [1, 2, 3, 4]
  assert ckpt_lib.Checkpointer(workdir).all_steps() == [2, 4]


@pytest.mark.parametrize("field,value,shown", [
    ("model.num_vq_embeddings", 64, "model.num_vq_embeddings: 32 in the checkpoint, 64 now"),
    ("model.block_out_channels", (8, 32), "model.block_out_channels: [8, 16] in the checkpoint"),
])
def test_a_checkpoint_of_another_config_names_the_fields(base_run, tmp_path, field, value, shown):
  workdir = _copy(base_run, tmp_path)
  with pytest.raises(ckpt_lib.CheckpointError) as err:
    loop.train_and_evaluate(_config(**{field: value}), workdir)
  message = str(err.value)
  assert "step 4" in message and shown in message and "Refusing to silently start" in message
  assert _steps_logged(workdir) == [1, 2, 3, 4]


def test_a_checkpoint_of_another_stage_is_refused(base_run, tmp_path):
  workdir = _copy(base_run, tmp_path)
  config = _config("configs/diffusion.py:tiny", vqvae_workdir=base_run)
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"step 4 .* written by a 'vqvae' run, but this config trains "
                           r"'diffusion'.*new one"):
    loop.train_and_evaluate(config, workdir)


def test_restore_step_goes_back_past_a_damaged_step(base_run, tmp_path, caplog):
  workdir = _copy(base_run, tmp_path)
  _flip_bytes(workdir)
  with pytest.raises(ckpt_lib.CheckpointError, match=r"no complete checkpoint step 3 .*\[2, 4\]"):
    loop.train_and_evaluate(_config(**{"train.restore_step": 3}), workdir)
  with caplog.at_level("WARNING"):
    loop.train_and_evaluate(_config(**{"train.restore_step": 2}), workdir)
  assert any("moved the later checkpoint step 4" in r.getMessage() for r in caplog.records)
  assert _steps_logged(workdir) == [1, 2, 3, 4]
  assert ckpt_lib.Checkpointer(workdir).all_steps() == [2, 4]
  assert len(glob.glob(os.path.join(workdir, "checkpoints", "4.superseded-*"))) == 1
  # A preempted job re-runs the same command: it resumes from the latest step, discarding nothing.
  loop.train_and_evaluate(_config(**{"train.restore_step": 2}), workdir)
  assert _steps_logged(workdir) == [1, 2, 3, 4]
  assert len(glob.glob(os.path.join(workdir, "checkpoints", "4.superseded-*"))) == 1


# -- metrics.jsonl and TensorBoard across a kill ------------------------------------------------


def _tensorboard_losses(workdir):
  """``{step: loss}`` as TensorBoard shows it, each step once."""
  shown = metrics.tensorboard_scalars(workdir, "loss")
  assert all(len(v) == 1 for v in shown.values()), f"steps shown twice: {shown}"
  return {s: v[0] for s, v in shown.items()}


def test_a_run_killed_between_checkpoints_resumes_into_one_history(base_run, tmp_path, caplog):
  """Also the unfinished latest step: skipped, with a warning naming it and the step restored."""
  straight, killed = base_run, str(tmp_path / "killed")  # base_run: uninterrupted, 4 steps
  # Killed while step 3's checkpoint was being committed: its folder lacks the commit file, and
  # metrics.jsonl already holds step 3.
  loop.train_and_evaluate(_config(), killed, stop_after=3)
  os.remove(os.path.join(killed, "checkpoints", "3", "commit_success.txt"))
  assert [r["step"] for r in _rows_of(killed)] == [1, 2, 3]
  with caplog.at_level("WARNING"):
    loop.train_and_evaluate(_config(), killed)
  assert any("step 3" in r.getMessage() and "previous complete step 2" in r.getMessage()
             for r in caplog.records)
  rows = _rows_of(killed)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  expected = {r["step"]: r["loss"] for r in _rows_of(straight)}
  np.testing.assert_allclose([r["loss"] for r in rows], [expected[s] for s in range(1, 5)],
                             rtol=1e-5, atol=1e-6)
  shown = _tensorboard_losses(killed)
  assert sorted(shown) == [1, 2, 3, 4]
  np.testing.assert_allclose([shown[s] for s in range(1, 5)], [r["loss"] for r in rows], rtol=1e-6)
  assert ckpt_lib.Checkpointer(killed).all_steps() == [2, 4]
  assert len(glob.glob(os.path.join(killed, "checkpoints", "3.incomplete-*"))) == 1


# -- saves that fail ------------------------------------------------------------------------


def _fill_the_disk_at(monkeypatch, step):
  """The commit of ``step`` fails with ENOSPC, as a full disk makes orbax's last write fail."""
  original = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self):
    if os.path.basename(str(self.get())).startswith(f"{step}."):
      raise OSError(errno.ENOSPC, "No space left on device")
    return await original(self)
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", finalize)


def test_disk_full_while_saving_is_a_clear_error_and_the_previous_step_stays(tmp_path,
                                                                             monkeypatch):
  params = {"w": jnp.arange(9.0).reshape(3, 3)}
  state = TrainState(step=jnp.array(2, jnp.int32), params=params,
                     opt_state=optax.adam(1e-3).init(params))
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=1, async_save=False)
  ckpt.save(2, state, {}, {"stage": "test"})
  _fill_the_disk_at(monkeypatch, 4)
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"No space left on device while saving step 4 to .*checkpoints; the "
                           r"previous checkpoint step 2 is intact"):
    ckpt.save(4, state.replace(step=jnp.array(4, jnp.int32)), {}, {"stage": "test"})
  monkeypatch.undo()
  ckpt.close()
  reader = ckpt_lib.Checkpointer(str(tmp_path))
  assert reader.all_steps() == [2]
  restored, _ = reader.restore(2, jax.eval_shape(lambda: state))
  np.testing.assert_array_equal(restored.params["w"], params["w"])
  reader.close()


def test_disk_full_in_an_asynchronous_save_surfaces_at_the_next_save(tmp_path, monkeypatch,
                                                                     caplog):
  workdir = str(tmp_path / "run")
  overrides = {"train.num_steps": 6, "train.keep_checkpoints": 1, "train.async_checkpoints": True}
  _fill_the_disk_at(monkeypatch, 4)
  # Step 4's save fails in the background; the error surfaces when step 6 is saved.
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"No space left on device while saving step 4 to .*checkpoints; the "
                           r"previous checkpoint step 2 is intact"):
    loop.train_and_evaluate(_config(**overrides), workdir)
  monkeypatch.undo()
  assert ckpt_lib.Checkpointer(workdir).all_steps() == [2]
  # Space freed: the same command skips orbax's unfinished folder of step 4 and resumes from 2.
  assert glob.glob(os.path.join(workdir, "checkpoints", "4.orbax-checkpoint-tmp*"))
  with caplog.at_level("WARNING"):
    loop.train_and_evaluate(_config(**overrides), workdir)
  assert any("step 4" in r.getMessage() and "restoring step 2" in r.getMessage()
             for r in caplog.records)
  assert _steps_logged(workdir) == [1, 2, 3, 4, 5, 6]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["6"]
