"""The train state shared by every stage, and the task interface the loop drives.

One loop (``vqd_jax.training.loop``) trains every stage; what differs between stages lives in a
*task* object: how to initialise the state, one pure step function, and how to show progress.
"""

from __future__ import annotations

from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; a pytree so it can be jitted, donated, sharded and saved.

  Attributes:
    step: int32 scalar, the number of optimizer updates applied.
    params: the trained parameters (fp32 master copy).
    opt_state: optax state for ``params``.
    ema_params: exponential moving average of ``params`` (same structure), or None.
    extra: task-specific state that is not trained by the main optimizer but must be saved, e.g.
      the diffusion loss history or the VQ codebook usage counters and discriminator.
  """

  step: jax.Array
  params: PyTree
  opt_state: PyTree
  ema_params: PyTree | None = None
  extra: PyTree = flax.struct.field(default_factory=dict)


class Task(Protocol):
  """What the training loop needs from a stage (VQ autoencoder, diffusion denoiser, ...)."""

  def init_state(self, key: jax.Array, batch: dict[str, Any]) -> TrainState:
    """Initialises the state from one example batch (only its shapes are used)."""

  def train_step(self, state: TrainState, batch: dict[str, Any], key: jax.Array
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update. Pure and jittable; metrics are scalars."""


def ema_update(ema: PyTree, params: PyTree, decay: float | jax.Array) -> PyTree:
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: e * decay + p.astype(e.dtype) * (1.0 - decay), ema, params)


def ema_decay_at(step: jax.Array, decay: float, warmup: int = 0) -> jax.Array:
  """EMA decay with an optional warm-up, min(decay, (1 + step) / (10 + step)) once step > warmup.

  Early in training the average would otherwise be dominated by the random initialisation.
  """
  step = jnp.asarray(step, jnp.float32)
  ramp = (1.0 + step) / (10.0 + step)
  return jnp.where(step < warmup, 0.0, jnp.minimum(decay, ramp))


def apply_gradients(state: TrainState, grads: PyTree, tx, ema_decay: float, **fields: Any
                    ) -> TrainState:
  """One optimizer step: new params and optimizer state, the EMA moved towards the new params,
  ``step + 1``, and any other ``fields`` of the state replaced."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    ema = ema_update(ema, params, ema_decay_at(state.step, ema_decay))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                       **fields)
