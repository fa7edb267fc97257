"""eDiff-I expert denoisers by noise level, trained together in one jitted step.

The ensemble's ``params["transformer"]`` is the single denoiser's tree with every leaf stacked on a
leading ``expert`` axis ``[E, ...]`` (a logical axis, replicated by default); the text encoder and
null embedding stay one shared copy. Each step splits the batch into E sub-batches, draws each
expert's t only from its own interval (``diffusion.experts.sample_expert_timesteps``) and runs the
single model's loss under ``jax.vmap`` over the expert axis. The loss is the sum of the experts'
losses, so each expert gets exactly the gradient the single model would get on its sub-batch; the
optimizer (clipping, Adam, schedule) runs per expert, also under ``jax.vmap``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vqd_jax import build, diffusion
from vqd_jax.diffusion import experts as experts_lib
from vqd_jax.training import optim as optim_lib
from vqd_jax.training.diffusion_task import DiffusionTask

EXPERT_AXIS = "expert"


def per_expert(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """``tx`` applied to each expert separately (its own clipping norm and moments), over axis 0."""
  def update(updates, state, params=None):
    return jax.vmap(tx.update)(updates, state, params)
  return optax.GradientTransformation(jax.vmap(tx.init), update)


def stack_boxed(params: Any, num_experts: int) -> Any:
  """``[...]`` leaves -> ``[E, ...]``, logical names gaining a leading ``expert`` axis."""
  def one(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      return leaf.replace(value=experts_lib.stack_experts(leaf.value, num_experts),
                          names=(EXPERT_AXIS,) + tuple(leaf.names))
    return experts_lib.stack_experts(leaf, num_experts)
  return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


class ExpertDiffusionTask(DiffusionTask):
  """``DiffusionTask`` for ``config.experts.num > 0`` (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.intervals = build.expert_intervals(config)
    num = self.intervals.num_experts
    if config.train.batch_size % num:
      raise ValueError(f"config.train.batch_size={config.train.batch_size} does not split into "
                       f"{num} equal expert sub-batches; make it a multiple of {num}.")
    if config.diffusion.layout_warmup_steps:
      raise ValueError("Expert fine-tuning draws t from each expert's interval, not the layout "
                       "warm-up's: set --config.diffusion.layout_warmup_steps=0.")
    super().__init__(config, workdir)
    tx = optim_lib.make_optimizer(config.optim, config.train.num_steps)
    labels = {"train": tx, "freeze": optax.set_to_zero(), "experts": per_expert(tx)}
    self.tx = optax.multi_transform(labels, self._labels)

  def _labels(self, params: dict[str, Any]) -> dict[str, Any]:
    """One label per parameter; a logical box takes its label whole, so the optimizer state of
    the other transforms holds no box around an empty (masked) node."""
    encoder = "train" if self.conditioner.trainable else "freeze"
    names = {"transformer": "experts", "text_encoder": encoder}
    return {k: jax.tree.map(lambda _, lab=names.get(k, "train"): lab, v,
                            is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
            for k, v in params.items()}

  @property
  def num_experts(self) -> int:
    return self.intervals.num_experts

  def init_params(self, key: jax.Array, batch: dict[str, jax.Array]) -> Any:
    params = super().init_params(key, batch)
    params["transformer"] = stack_boxed(params["transformer"], self.num_experts)
    return params

  def base_params(self, params: Any) -> Any:
    """The single denoiser's shapes: the expert axis dropped."""
    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype),
                          params["transformer"])
    return {**params, "transformer": shapes}

  def params_from_base(self, params: Any) -> Any:
    if params is None:
      return None
    return {**params, "transformer": experts_lib.stack_experts(params["transformer"],
                                                               self.num_experts)}

  def sampling_params(self, transformer_params: Any) -> Any:
    return diffusion.ExpertParams(transformer_params, self.intervals)

  def expert_timesteps(self, key, history, rows_per_expert: int):
    """``(t [E, b], pt [E, b])``: each expert's draws from its own interval."""
    return experts_lib.sample_expert_timesteps(
        key, history, self.intervals, rows_per_expert,
        importance=self.config.diffusion.importance_sampling)

  def loss_fn(self, params, batch, key, history, step):
    """Sum over experts of the single model's loss on each expert's ``[B / E]`` sub-batch."""
    del step  # no layout warm-up (checked at construction)
    k_drop, k_t, k_q, k_dropout = jax.random.split(key, 4)
    x0 = self.targets(batch)
    cond = self.conditioning(params, batch, k_drop)
    e, rows = self.num_experts, x0.shape[0] // self.num_experts
    t, pt = self.expert_timesteps(k_t, history, rows)
    split = lambda a: a.reshape((e, rows) + a.shape[1:])  # [B, ...] -> [E, B / E, ...]
    losses, terms = jax.vmap(self.denoiser_loss)(
        params["transformer"], split(x0), jax.tree.map(split, cond), t, pt,
        jax.random.split(k_q, e), jax.random.split(k_dropout, e))
    flat = diffusion.LossTerms(
        vb=terms.vb.reshape(-1), aux=terms.aux.reshape(-1), loss=jnp.mean(losses),
        vb_per_token=jnp.mean(terms.vb_per_token), aux_per_token=jnp.mean(terms.aux_per_token),
        masked_fraction=jnp.mean(terms.masked_fraction))
    return jnp.sum(losses), (flat, t.reshape(-1))
