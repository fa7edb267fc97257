"""Expert denoisers trained from a base run: intervals respected, the split reproduces the base,
kill-and-resume is exact, a bad init_from is a clear error, and the run loads and samples."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax import diffusion
from vqd_jax import checkpoint as ckpt_lib
from vqd_jax.sharding import on_first_local_device
from test_training_loop import _config  # pylint: disable=wrong-import-order
from vqd_jax.training import loop
from vqd_jax.training.expert_task import ExpertDiffusionTask
from vqd_jax.training.tasks import make_task


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def base_dir(tiny_vq_dir, tmp_path_factory):
  """A trained (4 steps) tiny single-denoiser run."""
  workdir = str(tmp_path_factory.mktemp("experts") / "base")
  loop.train_and_evaluate(_config("configs/diffusion.py:tiny", vqvae_workdir=tiny_vq_dir), workdir)
  return workdir


def _expert_config(tiny_vq_dir, base_dir, **overrides):
  return _config("configs/diffusion.py:tiny_experts", vqvae_workdir=tiny_vq_dir,
                 init_from=base_dir, **overrides)


def _task_and_state(config, workdir):
  """The task, a warm-started state and one batch, as the loop builds them (one device)."""
  task = make_task(config, workdir)
  batch = jax.tree.map(jnp.asarray, next(task.make_train_iterator(0, 1)))
  state = jax.jit(lambda k, b: jax.tree.map(
      lambda x: x.value if hasattr(x, "value") else x, task.init_state(k, b),
      is_leaf=lambda x: hasattr(x, "names")))(jax.random.key(0), batch)
  return task, task.warm_start(state), batch


def test_split_reproduces_the_base_and_each_expert_sees_only_its_interval(
    tiny_vq_dir, base_dir, tmp_path):
  config = _expert_config(tiny_vq_dir, base_dir)
  task, state, batch = _task_and_state(config, str(tmp_path / "ens"))
  assert isinstance(task, ExpertDiffusionTask) and task.intervals.boundaries == (25, 75)
  base = ckpt_lib.Checkpointer(base_dir).restore_subtree(4, {"params": on_first_local_device(
      task.base_params(jax.eval_shape(lambda p: p, state.params)))})["params"]
  base = base["transformer"]
  # Every expert starts as the base; make them distinct to see which expert gets which rows.
  scale = jnp.asarray([1.0, 1.1, 0.9])
  for leaf, ref in zip(jax.tree.leaves(state.params["transformer"]), jax.tree.leaves(base)):
    np.testing.assert_array_equal(np.asarray(leaf), np.broadcast_to(ref, leaf.shape))
  params = dict(state.params, transformer=jax.tree.map(
      lambda x: x * scale.reshape((3,) + (1,) * (x.ndim - 1)), state.params["transformer"]))
  history = state.extra["loss_history"]
  key = jax.random.key(7)
  total, (terms, t) = jax.jit(task.loss_fn)(params, batch, key, history, 0)

  # Independent truth: the single model's loss, expert by expert, on the same rows and keys.
  k_drop, k_t, k_q, k_dropout = jax.random.split(key, 4)
  t = np.asarray(t).reshape(3, 2)
  _, pt = task.expert_timesteps(k_t, history, 2)
  cond = task.conditioning(params, batch, k_drop)
  x0 = task._tokens(batch)  # pylint: disable=protected-access
  expected = []
  for e, (kq, kd) in enumerate(zip(jax.random.split(k_q, 3), jax.random.split(k_dropout, 3))):
    lo, hi = task.intervals.interval(e)
    assert (lo <= t[e]).all() and (t[e] <= hi).all()
    rows = slice(2 * e, 2 * e + 2)
    one = jax.tree.map(lambda x, e=e: x[e], params["transformer"])
    loss_e, terms_e = task.denoiser_loss(one, x0[rows], jax.tree.map(lambda a: a[rows], cond),
                                         jnp.asarray(t[e]), pt[e], kq, kd)
    np.testing.assert_allclose(np.asarray(terms.vb).reshape(3, 2)[e], terms_e.vb, rtol=1e-5)
    expected.append(float(loss_e))
  np.testing.assert_allclose(float(total), sum(expected), rtol=1e-5)
  # With the experts left equal to the base, the ensemble's loss is the base model's.
  total_base, _ = jax.jit(task.loss_fn)(state.params, batch, key, history, 0)
  unscaled = []
  for e, (kq, kd) in enumerate(zip(jax.random.split(k_q, 3), jax.random.split(k_dropout, 3))):
    rows = slice(2 * e, 2 * e + 2)
    unscaled.append(float(task.denoiser_loss(base, x0[rows], jax.tree.map(
        lambda a: a[rows], cond), jnp.asarray(t[e]), pt[e], kq, kd)[0]))
  np.testing.assert_allclose(float(total_base), sum(unscaled), rtol=1e-6)


def test_kill_and_resume_gives_the_same_next_losses(tiny_vq_dir, base_dir, tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  loop.train_and_evaluate(_expert_config(tiny_vq_dir, base_dir), straight)
  loop.train_and_evaluate(_expert_config(tiny_vq_dir, base_dir), resumed, stop_after=2)
  loop.train_and_evaluate(_expert_config(tiny_vq_dir, base_dir), resumed)
  a, b = _losses(straight), _losses(resumed)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5, atol=1e-6)
  assert a[3] != a[2]
  # The trained ensemble loads, samples through the pipeline and refuses diffusers export.
  from vqd_jax.inference import VQDiffusionPipeline, load_diffusion_run  # pylint: disable=import-outside-toplevel
  run = load_diffusion_run(straight)
  assert isinstance(run.params["transformer"], diffusion.ExpertParams)
  pipe = VQDiffusionPipeline.from_run(straight)
  tokens = pipe.generate_tokens(["a large red circle"], num_inference_steps=4, guidance_scale=2.0)
  assert tokens.shape == (1, pipe.transformer.num_tokens) and tokens.min() >= 0
  with pytest.raises(ValueError, match="expert"):
    pipe.save_pretrained(str(tmp_path / "export"))


@pytest.mark.parametrize("init_from,error", [
    ("nowhere", FileNotFoundError), ("tiny_vq", ValueError)])
def test_missing_or_wrong_init_from_is_a_clear_error(tiny_vq_dir, tmp_path, init_from, error):
  path = tiny_vq_dir if init_from == "tiny_vq" else str(tmp_path / init_from)
  config = _config("configs/diffusion.py:tiny_experts", vqvae_workdir=tiny_vq_dir,
                   init_from=path)
  with pytest.raises(error, match="init_from"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))


def test_experts_need_a_batch_that_splits_evenly(tiny_vq_dir, tmp_path):
  config = _config("configs/diffusion.py:tiny_experts", vqvae_workdir=tiny_vq_dir,
                   **{"train.batch_size": 8})
  with pytest.raises(ValueError, match="multiple of 3"):
    make_task(config, str(tmp_path / "run"))
