"""Memory levers of the diffusion stage: bfloat16 compute over float32 master weights (optimizer
state and EMA float32 too, log-probabilities float32), and rematerialisation that changes nothing
but memory."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax import configs_io
from vqd_jax.training.diffusion_task import DiffusionTask


def make_task(tiny_vq_dir, workdir, **model):
  config = configs_io.load_config("configs/diffusion.py:tiny")
  config.vqvae_workdir = tiny_vq_dir
  for key, value in model.items():
    config.model[key] = value
  return DiffusionTask(config, str(workdir))


@pytest.fixture(scope="module")
def batch_and_state(tiny_vq_dir, tmp_path_factory):
  """One training batch and a freshly initialised (float32) state of the tiny denoiser."""
  task = make_task(tiny_vq_dir, tmp_path_factory.mktemp("f32"))
  batch = {k: jnp.asarray(v) for k, v in next(task.make_train_iterator(0, 1)).items()}
  state = jax.jit(lambda k, b: nn.meta.unbox(task.init_state(k, b)))(jax.random.key(0), batch)
  return batch, state


def float_dtypes(tree):
  return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_bfloat16_compute_keeps_float32_weights_and_log_probs(tiny_vq_dir, tmp_path,
                                                           batch_and_state):
  batch, state = batch_and_state
  f32 = make_task(tiny_vq_dir, tmp_path / "f32")
  bf16 = make_task(tiny_vq_dir, tmp_path / "bf16", dtype="bfloat16")

  x0 = jax.jit(f32._tokens)(batch)  # pylint: disable=protected-access
  t = jnp.arange(x0.shape[0], dtype=jnp.int32) * 10

  @jax.jit
  def forward(params):
    out = {}
    for name, task in (("f32", f32), ("bf16", bf16)):
      cond = task.conditioner.encode(params, batch["text_ids"], batch["text_mask"])
      out[name] = cond.states, task.denoiser.apply({"params": params["transformer"]}, x0, t,
                                                   cond.states, cond.mask)
    return out

  out = forward(state.params)
  assert out["bf16"][0].dtype == jnp.bfloat16  # the text encoder computes in bfloat16
  logp32, logp16 = out["f32"][1], out["bf16"][1]
  assert logp16.dtype == jnp.float32
  np.testing.assert_allclose(np.exp(logp16).sum(-1), 1.0, rtol=1e-5)  # normalised in float32
  diff = float(jnp.max(jnp.abs(logp16 - logp32)))
  # bfloat16 keeps 8 mantissa bits: visibly different from float32, yet the same model.
  assert 1e-4 < diff < 0.1, diff


def test_bfloat16_run_trains_with_float32_state(tiny_vq_dir, tmp_path, batch_and_state):
  batch, state = batch_and_state
  task = make_task(tiny_vq_dir, tmp_path, dtype="bfloat16")
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


def test_remat_changes_memory_not_numbers(tiny_vq_dir, tmp_path, batch_and_state):
  batch, state = batch_and_state
  plain = make_task(tiny_vq_dir, tmp_path / "plain")
  remat = make_task(tiny_vq_dir, tmp_path / "remat", remat=True)
  x0 = jax.jit(plain._tokens)(batch)  # pylint: disable=protected-access
  t = jnp.arange(x0.shape[0], dtype=jnp.int32) * 10
  states = jax.random.normal(jax.random.key(3),
                             batch["text_ids"].shape + (plain.config.text.width,))
  weights = jax.random.normal(jax.random.key(4), x0.shape + (plain.vq.num_codes,))

  @jax.jit
  def grads(params):
    def objective(task, p):
      logp = task.denoiser.apply({"params": p}, x0, t, states, batch["text_mask"])
      return jnp.sum(weights * logp)
    return [jax.grad(lambda p, task=task: objective(task, p))(params) for task in (plain, remat)]

  g_plain, g_remat = grads(state.params["transformer"])
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(g_remat))
  # The rematerialised program really recomputes: its gradient holds checkpointed blocks.
  def grad_program(task):
    return str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(task.denoiser.apply(
        {"params": p}, x0, t, states))))(state.params["transformer"]))
  assert "remat" in grad_program(remat) and "remat" not in grad_program(plain)


def test_unknown_compute_dtype_names_the_choices(tiny_vq_dir, tmp_path):
  with pytest.raises(ValueError, match="float32.*bfloat16"):
    make_task(tiny_vq_dir, tmp_path, dtype="float16")
