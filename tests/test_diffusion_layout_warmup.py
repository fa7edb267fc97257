"""The layout warm-up: the first steps of diffusion training draw only (nearly) fully masked times."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax import configs_io
from vqd_jax.training.diffusion_task import DiffusionTask


def test_warmup_steps_draw_only_top_times_and_later_steps_the_usual_ones(tiny_vq_dir, tmp_path):
  config = configs_io.load_config("configs/diffusion.py:tiny", [
      f"vqvae_workdir={tiny_vq_dir}", "diffusion.layout_warmup_steps=3",
      "diffusion.layout_warmup_from=0.9", "train.batch_size=64"])
  task = DiffusionTask(config, str(tmp_path))
  batch = {k: jnp.asarray(v) for k, v in next(task.make_train_iterator(0, 1)).items()}
  state = jax.jit(lambda k, b: nn.meta.unbox(task.init_state(k, b)))(jax.random.key(0), batch)
  history = state.extra["loss_history"]
  times = jax.jit(lambda step, key: task.loss_fn(state.params, batch, key, history, step)[1][1])
  num_t = task.process.num_timesteps
  for step in (0, 2):
    t = np.asarray(times(step, jax.random.key(step)))
    assert t.min() >= 90 and t.max() < num_t and len(set(t.tolist())) > 3
  # From step 3 on: the usual draw (uniform over all T until every count is filled).
  t = np.concatenate([np.asarray(times(3, jax.random.key(k))) for k in range(4)])
  assert t.min() < 50 and t.max() >= 50
