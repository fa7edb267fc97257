"""Training objective of VQ-Diffusion (Gu et al. 2022): variational bound + auxiliary x0 loss.

The importance-sampling state of the official code (``Lt_history``/``Lt_count`` buffers mutated in
``forward``) is an explicit ``LossHistory`` pytree here: ``sample_timesteps`` reads it and
``update_history`` returns the new one, so a train step stays pure and the state can be
checkpointed and sharded with the rest of the train state.

One step of a trainer::

  t, pt = sample_timesteps(key_t, history, batch_size)
  x_t = process.q_sample(key_q, x0, t)
  log_x0_pred = model(x_t, t, text)                     # [B, N, K] log p(x0 | x_t)
  loss, terms = diffusion_loss(process, log_x0_pred, x0, x_t, t, pt)
  history = update_history(history, t, terms.vb)        # outside the gradient
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from vqd_jax.diffusion import validation
from vqd_jax.diffusion.logspace import index_to_log_onehot
from vqd_jax.diffusion.process import MaskAndReplace

# Importance sampling switches on once every timestep has been seen more than this many times.
MIN_COUNT_FOR_IMPORTANCE = 10
# Exponential moving average rate of the squared per-example loss, as in the official code.
HISTORY_DECAY = 0.9


@flax.struct.dataclass
class LossHistory:
  """Per-timestep statistics that drive importance sampling of t.

  Attributes (names mirror the official buffers so checkpoints convert by name):
    Lt_history: ``[T]`` float32 EMA of the squared per-example loss term L_t.
    Lt_count: ``[T]`` int32 number of examples seen at each t.
  """

  Lt_history: jax.Array  # pylint: disable=invalid-name
  Lt_count: jax.Array  # pylint: disable=invalid-name

  @classmethod
  def create(cls, num_timesteps: int) -> "LossHistory":
    """Empty history for T = ``num_timesteps`` (uniform sampling until it fills)."""
    return cls(Lt_history=jnp.zeros((num_timesteps,), jnp.float32),
               Lt_count=jnp.zeros((num_timesteps,), jnp.int32))


def importance_weights(history: LossHistory) -> jax.Array:
  """``[T]`` sampling probabilities ∝ sqrt(E[L_t²]), with t = 0 given t = 1's weight.

  The decoder term at t = 0 has a different scale from the KL terms, so (as in the official code)
  it borrows its neighbour's weight instead of dominating or vanishing.
  """
  weight = jnp.sqrt(history.Lt_history + 1e-10) + 1e-4
  weight = weight.at[0].set(weight[1])
  return weight / jnp.sum(weight)


def sample_timesteps(key: jax.Array, history: LossHistory, batch_size: int,
                     importance: bool = True) -> tuple[jax.Array, jax.Array]:
  """Draws ``t [B]`` int32 and its probability ``pt [B]`` float32.

  Uniform over [0, T) until every ``Lt_count > 10``, then ``importance_weights`` with replacement
  (the official sampler); always uniform with ``importance=False``. Jittable: both branches are
  computed and one is selected on device.
  """
  num_timesteps = history.Lt_history.shape[0]
  if num_timesteps < 2:
    raise ValueError(f"LossHistory must cover T >= 2 timesteps, got {num_timesteps}.")
  uniform_key, importance_key = jax.random.split(key)
  t_uniform = jax.random.randint(uniform_key, (batch_size,), 0, num_timesteps, jnp.int32)
  probs = importance_weights(history)
  t_importance = jax.random.categorical(importance_key, jnp.log(probs), shape=(batch_size,))
  t_importance = t_importance.astype(jnp.int32)
  ready = jnp.all(history.Lt_count > MIN_COUNT_FOR_IMPORTANCE) & importance
  t = jnp.where(ready, t_importance, t_uniform)
  pt = jnp.where(ready, probs[t], 1.0 / num_timesteps).astype(jnp.float32)
  return t, pt


def sample_top_timesteps(key: jax.Array, batch_size: int, first: int, num_timesteps: int
                         ) -> tuple[jax.Array, jax.Array]:
  """``t [B]`` uniform on ``first..T-1`` and its probability ``pt [B] = 1 / (T - first)``.

  The layout warm-up of the diffusion task draws t from here: at these times (nearly) every token
  is masked, so the model can only learn where the caption puts things.
  """
  if not 0 <= first < num_timesteps:
    raise ValueError(f"first must be in [0, {num_timesteps}), got {first}.")
  t = jax.random.randint(key, (batch_size,), first, num_timesteps, jnp.int32)
  return t, jnp.full((batch_size,), 1.0 / (num_timesteps - first), jnp.float32)


def update_history(history: LossHistory, t: jax.Array, lt: jax.Array) -> LossHistory:
  """Folds a batch of per-example terms ``lt [B]`` at times ``t [B]`` into the history.

  Each timestep present in the batch gets one EMA update with the mean of its examples' L_t²:
  ``h[t] <- 0.9 h[t] + 0.1 mean(L_t²)``; its count grows by the number of those examples. The
  official code scatters one EMA update per example into the same slot, so with duplicate t's an
  arbitrary one wins; averaging is deterministic and keeps the official rate of one update per
  step. Gradients are stopped.
  """
  t = jnp.asarray(t, jnp.int32)
  lt = jax.lax.stop_gradient(jnp.asarray(lt, jnp.float32))
  if t.ndim != 1 or lt.shape != t.shape:
    raise ValueError(f"t and lt must both be [B]; got t {t.shape} and lt {lt.shape}.")
  num_timesteps = history.Lt_history.shape[0]
  seen = jnp.zeros((num_timesteps,), jnp.int32).at[t].add(1, mode="drop")
  total = jnp.zeros((num_timesteps,), jnp.float32).at[t].add(lt * lt, mode="drop")
  mean_sq = total / jnp.maximum(seen, 1).astype(jnp.float32)
  ema = HISTORY_DECAY * history.Lt_history + (1.0 - HISTORY_DECAY) * mean_sq
  return LossHistory(Lt_history=jnp.where(seen > 0, ema, history.Lt_history),
                     Lt_count=history.Lt_count + seen.astype(history.Lt_count.dtype))


def multinomial_kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """KL(p ‖ q) over the last axis, ``[..., C]`` -> ``[...]``; states with p = 0 contribute 0.

  Written so that exactly impossible states (-inf in both) give 0 and finite gradients, rather
  than ``0 · (-inf - -inf) = NaN``.
  """
  present = log_p > -jnp.inf
  safe_p = jnp.where(present, log_p, 0.0)
  safe_q = jnp.where(present, log_q, 0.0)
  return jnp.sum(jnp.where(present, jnp.exp(safe_p) * (safe_p - safe_q), 0.0), axis=-1)


@flax.struct.dataclass
class LossTerms:
  """What ``diffusion_loss`` measured, besides the scalar it returns.

  Attributes:
    vb: ``[B]`` L_t per example, summed over tokens: the KL term, or the decoder NLL at t = 0.
      Feed this to ``update_history``.
    aux: ``[B]`` auxiliary term per example, summed over tokens (decoder NLL at t = 0); zeros
      when the auxiliary weight is 0 (then it is not computed).
    loss: the scalar objective.
    vb_per_token: mean over the batch of ``vb / N`` (nats per token, not importance weighted).
    aux_per_token: mean over the batch of ``aux / N``.
    masked_fraction: fraction of [MASK] tokens in x_t.
  """

  vb: jax.Array
  aux: jax.Array
  loss: jax.Array
  vb_per_token: jax.Array
  aux_per_token: jax.Array
  masked_fraction: jax.Array

  def metrics(self) -> dict[str, jax.Array]:
    """Scalar metrics for logging."""
    return {"loss": self.loss, "vb_per_token": self.vb_per_token,
            "aux_per_token": self.aux_per_token, "masked_fraction": self.masked_fraction}


def diffusion_loss(process: MaskAndReplace, log_x0_pred: Any, x0: Any, x_t: Any, t: Any, pt: Any,
                   *, aux_weight: float = 5e-4, adaptive_aux_weight: bool = True,
                   mask_weight: tuple[float, float] = (1.0, 1.0)) -> tuple[jax.Array, LossTerms]:
  """The official VQ-Diffusion objective for one batch.

  ``loss = mean_b[(L_t + λ·w(t)·aux) / pt] / N`` with ``w(t) = 2 - t/T`` when
  ``adaptive_aux_weight`` (all released configs) else 1, and per token:

  * L_t = KL(q(x_{t-1} | x_t, x0) ‖ p(x_{t-1} | x_t)) for t > 0, and the decoder NLL
    ``-log p(x0 | x_1)`` at t = 0 (the prior term L_T is a constant and omitted);
  * aux = KL(onehot(x0) ‖ p̂(x0 | x_t)) ≈ -log p̂(x0), replaced by the decoder NLL at t = 0;
  * both multiplied by ``mask_weight[0]`` where x_t is [MASK] and ``mask_weight[1]`` elsewhere
    (the decoder NLL is not, as in the official code).

  Args:
    process: the forward process.
    log_x0_pred: ``[B, N, K]`` the model's log p̂(x0 | x_t) (the official model clamps it to
      [-70, 0]; that is the caller's choice).
    x0: ``[B, N]`` clean codes in [0, K).
    x_t: ``[B, N]`` noised tokens the model saw.
    t: ``[B]`` timesteps in [0, T).
    pt: ``[B]`` probability with which each t was drawn (``sample_timesteps``).
    aux_weight: λ (paper 5e-4). Small-K or short-T setups often want it larger.
    adaptive_aux_weight: multiply λ by ``2 - t/T``.
    mask_weight: (weight at [MASK] tokens, weight at real tokens).

  Returns:
    ``(loss, LossTerms)``.
  """
  k, t_count = process.num_classes, process.num_timesteps
  log_x0_pred = validation.check_class_axis("log_x0_pred", log_x0_pred, k).astype(jnp.float32)
  x0 = validation.check_integer_tokens("x0", x0, high=k - 1)
  x_t = validation.check_integer_tokens("x_t", x_t, high=k)
  if log_x0_pred.shape[:-1] != x0.shape or x_t.shape != x0.shape:
    raise ValueError(f"Shape mismatch: log_x0_pred {log_x0_pred.shape}, x0 {x0.shape}, x_t "
                     f"{x_t.shape}; expected [B, N, K], [B, N], [B, N].")
  batch, num_tokens = x0.shape
  t = validation.check_time("t", t, batch, 0, t_count - 1)
  t = jnp.broadcast_to(t, (batch,))
  pt = jnp.broadcast_to(jnp.asarray(pt, jnp.float32), (batch,))

  log_x0_true = index_to_log_onehot(x0, k)
  t_prev = t - 1
  log_model = process.posterior_unchecked(log_x0_pred, x_t, t, t_prev)
  log_true = jax.lax.stop_gradient(process.posterior_unchecked(log_x0_true, x_t, t, t_prev))

  is_mask = x_t == k
  token_weight = jnp.where(is_mask, mask_weight[0], mask_weight[1]).astype(jnp.float32)
  kl = jnp.sum(multinomial_kl(log_true, log_model) * token_weight, axis=-1)
  model_at_x0 = jnp.take_along_axis(log_model, x0[..., None].astype(jnp.int32), axis=-1)[..., 0]
  decoder_nll = -jnp.sum(model_at_x0, axis=-1)
  at_decoder = t == 0
  vb = jnp.where(at_decoder, decoder_nll, kl)
  per_example = vb / pt
  if aux_weight:
    aux_kl = jnp.sum(multinomial_kl(log_x0_true, log_x0_pred) * token_weight, axis=-1)
    aux = jnp.where(at_decoder, decoder_nll, aux_kl)
    aux_scale = (2.0 - t.astype(jnp.float32) / t_count) if adaptive_aux_weight else 1.0
    per_example = per_example + aux_weight * aux_scale * aux / pt
  else:
    aux = jnp.zeros_like(vb)
  loss = jnp.mean(per_example) / num_tokens
  terms = LossTerms(vb=vb, aux=aux, loss=loss, vb_per_token=jnp.mean(vb) / num_tokens,
                    aux_per_token=jnp.mean(aux) / num_tokens,
                    masked_fraction=jnp.mean(is_mask.astype(jnp.float32)))
  return loss, terms
