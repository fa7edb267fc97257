"""Checkpoint round trips and the refusal to silently start afresh."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vqd_jax.checkpoint import CheckpointError, Checkpointer
from vqd_jax.training.state import TrainState, ema_decay_at, ema_update


def _state(width=3):
  params = {"w": jnp.arange(width * width, dtype=jnp.float32).reshape(width, width)}
  tx = optax.adam(1e-3)
  return TrainState(step=jnp.array(7, jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=jax.tree.map(lambda x: x * 2, params),
                    extra={"history": jnp.linspace(0, 1, 5)})


def test_round_trip_restores_every_array_and_data_state(tmp_path):
  state = _state()
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(7, state, {"next_index": 12}, {"stage": "test"})
  ckpt.wait()
  assert ckpt.latest_step() == 7
  restored, data_state = ckpt.restore(7, jax.eval_shape(lambda: state))
  assert data_state == {"next_index": 12}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert ckpt.restore_config() == {"stage": "test"}
  ckpt.close()


def test_mismatched_model_is_an_error_not_a_fresh_start(tmp_path):
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(1, _state(3), {}, {})
  ckpt.wait()
  with pytest.raises(CheckpointError, match="cannot be restored"):
    ckpt.restore(1, jax.eval_shape(lambda: _state(4)))
  ckpt.close()


def test_inference_reads_one_field_without_the_optimizer(tmp_path):
  state = _state()
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(7, state, {}, {})
  ckpt.wait()
  abstract = {"ema_params": jax.eval_shape(lambda: state.ema_params)}
  restored = ckpt.restore_subtree(7, abstract)
  assert set(restored) == {"ema_params"}  # no opt_state, no params: only what was asked for
  np.testing.assert_array_equal(restored["ema_params"]["w"], np.asarray(state.params["w"]) * 2)
  with pytest.raises(CheckpointError, match=r"does not fit the model.*\(3, 3\) on disk, \(4, 4\)"):
    ckpt.restore_subtree(7, {"params": jax.eval_shape(lambda: _state(4).params)})
  ckpt.close()


def test_keep_n_deletes_old_checkpoints(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=2, async_save=False)
  for step in (1, 2, 3):
    ckpt.save(step, _state(), {}, {}, force=True)
    ckpt.wait()
  assert ckpt.all_steps() == [2, 3]
  ckpt.close()


def test_ema_update_and_decay_warmup():
  ema = {"a": jnp.array([1.0, 2.0])}
  new = ema_update(ema, {"a": jnp.array([3.0, 6.0])}, 0.75)
  np.testing.assert_allclose(new["a"], [0.75 * 1 + 0.25 * 3, 0.75 * 2 + 0.25 * 6])
  # (1 + step) / (10 + step) ramps up before the configured decay takes over.
  assert float(ema_decay_at(0, 0.999)) == pytest.approx(0.1)
  assert float(ema_decay_at(10_000, 0.999)) == pytest.approx(0.999)
