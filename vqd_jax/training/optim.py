"""Optimizers from config: AdamW with warm-up and decay, gradient-norm clipping."""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up to ``cfg.lr`` then ``cfg.decay`` ('cosine', 'linear' or 'constant').

  Cosine and linear decay end at ``cfg.lr * cfg.end_lr_factor`` at ``num_steps``.
  """
  warmup = int(cfg.warmup_steps)
  end = cfg.lr * cfg.end_lr_factor
  decay_steps = max(num_steps - warmup, 1)
  decay = cfg.decay
  if decay == "cosine":
    after = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=end / cfg.lr if cfg.lr else 0.0)
  elif decay == "linear":
    after = optax.linear_schedule(cfg.lr, end, decay_steps)
  elif decay == "constant":
    after = optax.constant_schedule(cfg.lr)
  else:
    raise ValueError(f"optim.decay must be 'cosine', 'linear' or 'constant', got {decay!r}.")
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def make_optimizer(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay on matrices only) after global-norm clipping.

  Config fields: lr, warmup_steps, decay, end_lr_factor, b1, b2, weight_decay, grad_clip (<= 0 turns
  clipping off).
  """
  schedule = learning_rate_schedule(cfg, num_steps)
  # Decay only kernels/embeddings: decaying norms and biases hurts small models and buys nothing.
  def decay_mask(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)

  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                           mask=decay_mask))
  return optax.chain(*parts)
