"""Memory levers of the diffusion stage: bfloat16 compute over float32 master weights (optimizer
state and EMA float32 too, log-probabilities float32), and rematerialisation that changes nothing
but memory."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax import configs_io
from vqd_jax.training import frozen_vq
from vqd_jax.training.diffusion_task import DiffusionTask


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("vq_precision") / "run")
  frozen_vq.save_untrained(workdir, configs_io.load_config("configs/vqvae.py:tiny"))
  return workdir


def make_task(vq_dir, workdir, **model):
  config = configs_io.load_config("configs/diffusion.py:tiny")
  config.vqvae_workdir = vq_dir
  for key, value in model.items():
    config.model[key] = value
  return DiffusionTask(config, str(workdir))


@pytest.fixture(scope="module")
def batch_and_state(vq_dir, tmp_path_factory):
  """One training batch and a freshly initialised (float32) state of the tiny denoiser."""
  task = make_task(vq_dir, tmp_path_factory.mktemp("f32"))
  batch = {k: jnp.asarray(v) for k, v in next(task.make_train_iterator(0, 1)).items()}
  state = jax.jit(lambda k, b: nn.meta.unbox(task.init_state(k, b)))(jax.random.key(0), batch)
  return batch, state


def float_dtypes(tree):
  return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_bfloat16_compute_keeps_float32_weights_and_log_probs(vq_dir, tmp_path, batch_and_state):
  batch, state = batch_and_state
  f32 = make_task(vq_dir, tmp_path / "f32")
  bf16 = make_task(vq_dir, tmp_path / "bf16", dtype="bfloat16")
  params = state.params

  states16 = bf16.text_states(params, batch["text_ids"], batch["text_mask"])
  assert states16.dtype == jnp.bfloat16  # the text encoder computes in bfloat16
  x0 = f32._tokens(batch)  # pylint: disable=protected-access
  t = jnp.arange(x0.shape[0], dtype=jnp.int32) * 10
  states32 = f32.text_states(params, batch["text_ids"], batch["text_mask"])
  logp32 = f32.denoise_logits(params, x0, t, states32, batch["text_mask"])
  logp16 = bf16.denoise_logits(params, x0, t, states16, batch["text_mask"])
  assert logp16.dtype == jnp.float32
  np.testing.assert_allclose(np.exp(logp16).sum(-1), 1.0, rtol=1e-5)  # normalised in float32
  diff = float(jnp.max(jnp.abs(logp16 - logp32)))
  # bfloat16 keeps 8 mantissa bits: visibly different from float32, yet the same model.
  assert 1e-4 < diff < 0.1, diff


def test_bfloat16_run_trains_with_float32_state(vq_dir, tmp_path, batch_and_state):
  batch, state = batch_and_state
  task = make_task(vq_dir, tmp_path, dtype="bfloat16")
  step = jax.jit(task.train_step)
  key = jax.random.key(1)
  losses = []
  for _ in range(4):  # the same batch and key every step: the loss must go down
    state, metrics = step(state, batch, key)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0], losses
  assert float_dtypes(state.params) == {"float32"}
  assert float_dtypes(state.opt_state) == {"float32"}
  assert float_dtypes(state.ema_params) == {"float32"}


def test_remat_changes_memory_not_numbers(vq_dir, tmp_path, batch_and_state):
  batch, state = batch_and_state
  key = jax.random.key(2)
  out = {}
  for remat in (False, True):
    task = make_task(vq_dir, tmp_path / str(remat), remat=remat)
    grads, _ = jax.jit(jax.grad(task.loss_fn, has_aux=True))(
        state.params, batch, key, state.extra["loss_history"])
    out[remat] = grads
  for a, b in zip(jax.tree.leaves(out[False]), jax.tree.leaves(out[True])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(out[True]))


def test_unknown_compute_dtype_names_the_choices(vq_dir, tmp_path):
  with pytest.raises(ValueError, match="float32.*bfloat16"):
    make_task(vq_dir, tmp_path, dtype="float16")
