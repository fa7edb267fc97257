"""Reverse-process samplers: full, fast (exact skip posterior), purity prior, inpainting/editing.

Each sampler is one ``lax.scan`` over its network calls: one compiled program, no Python loop and
no host synchronisation per step. ``sample`` is pure and traceable; wrap it in ``jax.jit`` and pass
the network parameters as jit arguments (building ``denoise`` inside), so they are not baked into
the program as constants::

  @jax.jit
  def generate(params, text, null_text, key):
    def denoise(x_t, t):   # [2B, N] int32, [2B] int32 -> [2B, N, K] log p(x0 | x_t)
      cond = jnp.concatenate([null_text, text])      # rows [:B] null, rows [B:] prompt
      return model.apply(params, x_t, t, cond)
    return sample(denoise, key, process, batch_size=B, num_tokens=1024, guidance_scale=5.0)

The denoiser contract: ``denoise(x_t [B', N] int32, t [B'] int32) -> [B', N, K]`` log p(x0 | x_t)
(float, channels last, K real codes only). Without guidance B' = B. With ``guidance_scale != 1``
the sampler calls it once per step on ``concat([x_t, x_t])`` (B' = 2B): it must condition rows
``[:B]`` on the null embedding and rows ``[B:]`` on the prompt.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.diffusion import purity
from vqd_jax.diffusion import schedules
from vqd_jax.diffusion import validation
from vqd_jax.diffusion.guidance import prepare_log_x0
from vqd_jax.diffusion.guidance import uses_guidance
from vqd_jax.diffusion.logspace import sample_categorical
from vqd_jax.diffusion.process import MaskAndReplace

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]
START_MODES = ("mask", "noise")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Sampler settings that a config file or CLI carries; ``sample(..., **config.kwargs())``.

  Attributes:
    num_steps: network calls; None = one per timestep from ``start_t`` down to 0.
    truncation_rate: r, keep the top-r probability mass of p̂(x0) (1 = off; papers use 0.86).
    guidance_scale: classifier-free guidance s (1 = off; ITHQ uses 5).
    purity_weight: None for the posterior sampler; a float w selects the purity-prior sampler of
      Improved VQ-Diffusion (w = 0: purity-ordered reveals, values from p̂; the released
      Improved VQ-Diffusion code uses w = 1).
    start_t: time of the first call; None = T - 1.
    start_from: for regenerated positions of ``init_tokens``: "mask" (inpainting) or "noise"
      (editing: q_sample at ``start_t``).
  """

  num_steps: int | None = None
  truncation_rate: float = 1.0
  guidance_scale: float = 1.0
  purity_weight: float | None = None
  start_t: int | None = None
  start_from: str = "mask"

  def kwargs(self) -> dict[str, Any]:
    """The fields as keyword arguments of ``sample``."""
    return dataclasses.asdict(self)


def evaluation_times(start_t: int, num_steps: int) -> np.ndarray:
  """``[num_steps]`` int32 network times from ``start_t`` down to 0, ``round(linspace)``.

  Distinct when ``num_steps <= start_t + 1``; with more steps times repeat (purity sampler only).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if num_steps == 1:
    return np.array([start_t], np.int32)
  return np.round(np.linspace(start_t, 0, num_steps)).astype(np.int32)


def sample(denoise: Denoiser, key: jax.Array, process: MaskAndReplace, *, batch_size: int,
           num_tokens: int, num_steps: int | None = None, truncation_rate: float = 1.0,
           guidance_scale: float = 1.0, purity_weight: float | None = None,
           init_tokens: Any = None, inpaint_mask: Any = None, start_t: int | None = None,
           start_from: str = "mask") -> jax.Array:
  """Generates ``[batch_size, num_tokens]`` int32 codes with the reverse process.

  Per call at time t: p̂ = prepare(denoise(x_t, t)) (guidance, renormalise, truncation, clamp at
  -70); then either

  * posterior sampler (``purity_weight=None``): x_{t'} ~ q_posterior(p̂, x_t, t, t') by Gumbel-max,
    where t' is the next evaluation time (the exact skip posterior; -1 after the last call, i.e. a
    draw from p̂). With ``num_steps = start_t + 1`` this is the official 100-step sampler;
  * purity sampler: see ``vqd_jax.diffusion.purity``.

  Args:
    denoise: the network, see the module docstring for its contract.
    key: PRNG key; the same key gives the same tokens.
    process: the forward process the network was trained with.
    batch_size, num_tokens: B and N.
    num_steps: network calls (static). Default ``start_t + 1``. The posterior sampler needs
      ``num_steps <= start_t + 1``; the purity sampler may use more.
    truncation_rate, guidance_scale, purity_weight: see ``SamplerConfig``.
    init_tokens: optional ``[B, N]`` codes for inpainting/editing; positions outside
      ``inpaint_mask`` stay fixed at these values in every step.
    inpaint_mask: optional ``[B, N]`` or ``[N]`` bool, True = regenerate. Default: all True.
    start_t: time of the first call (static). Default T - 1. Without ``init_tokens`` the chain
      starts fully masked at ``start_t``.
    start_from: "mask" sets regenerated positions to [MASK] at ``start_t``; "noise" draws them
      from q(x_{start_t} | init_tokens) (editing: keeps a trace of the original content).

  Returns:
    ``[B, N]`` int32 codes in [0, K).
  """
  k, t_count = process.num_classes, process.num_timesteps
  batch_size, num_tokens = int(batch_size), int(num_tokens)
  if batch_size < 1 or num_tokens < 1:
    raise ValueError(f"batch_size and num_tokens must be >= 1, got {batch_size}, {num_tokens}.")
  start = t_count - 1 if start_t is None else int(start_t)
  if not 0 <= start < t_count:
    raise ValueError(f"start_t must lie in [0, {t_count - 1}], got {start_t}.")
  steps = start + 1 if num_steps is None else int(num_steps)
  if purity_weight is None and steps > start + 1:
    raise ValueError(f"num_steps={steps} exceeds the {start + 1} timesteps from start_t={start} "
                     "to 0; the posterior sampler needs distinct times (use fewer steps, or the "
                     "purity sampler, which may repeat times).")
  if not 0.0 < truncation_rate:
    raise ValueError(f"truncation_rate must be > 0, got {truncation_rate}.")
  if start_from not in START_MODES:
    raise ValueError(f"start_from must be one of {START_MODES}, got {start_from!r}.")
  times = evaluation_times(start, steps)

  init_key, loop_key = jax.random.split(key)
  x, regenerate, fixed = _initial_tokens(process, init_key, batch_size, num_tokens, init_tokens,
                                         inpaint_mask, start, start_from)
  predict = _predictor(denoise, batch_size, num_tokens, k, guidance_scale, truncation_rate)

  if purity_weight is not None:
    cum = schedules.cumulative_schedule(process.schedule, k, t_count)
    fractions = purity.reveal_fractions(cum.mask, start, steps)
    out = purity.purity_loop(predict, loop_key, x, regenerate, times, fractions,
                             float(purity_weight), k)
  else:
    out = _posterior_loop(process, predict, loop_key, x, times, regenerate, fixed)
  return jnp.where(regenerate, out, fixed) if fixed is not None else out


def _posterior_loop(process: MaskAndReplace, predict: Callable[[jax.Array, jax.Array], jax.Array],
                    key: jax.Array, x: jax.Array, times: np.ndarray, regenerate: jax.Array,
                    fixed: jax.Array | None) -> jax.Array:
  """One posterior draw per evaluation time; ``fixed`` tokens are re-imposed after every draw.

  Kept positions must stay fixed during the loop, not only at the end, because the network sees
  them (and a real token's posterior may move it to another code with the replace rate).
  """
  previous = np.append(times[1:], -1).astype(np.int32)

  def step(tokens, inputs):
    t, t_prev, step_key = inputs
    log_x0 = predict(tokens, t)
    logits = process.posterior_unchecked(log_x0, tokens, t, t_prev)
    drawn = sample_categorical(step_key, logits)
    return (drawn if fixed is None else jnp.where(regenerate, drawn, fixed)), None

  keys = jax.random.split(key, len(times))
  tokens, _ = jax.lax.scan(step, x, (jnp.asarray(times), jnp.asarray(previous), keys))
  return tokens


def _predictor(denoise: Denoiser, batch_size: int, num_tokens: int, num_classes: int,
               guidance_scale: float, truncation_rate: float):
  """Wraps ``denoise`` into ``(x [B, N], t []) -> [B, N, K]`` prepared log p̂, checking shapes."""
  guided = uses_guidance(guidance_scale)
  rows = 2 * batch_size if guided else batch_size

  def predict(tokens: jax.Array, t: jax.Array) -> jax.Array:
    model_in = jnp.concatenate([tokens, tokens]) if guided else tokens
    out = denoise(model_in, jnp.full((rows,), t, jnp.int32))
    expected = (rows, num_tokens, num_classes)
    if tuple(out.shape) != expected:
      extra = " (it must not include a [MASK] column)" if out.shape[-1] == num_classes + 1 else ""
      raise ValueError(f"denoise returned shape {tuple(out.shape)}, expected {expected} = "
                       f"[{'2B' if guided else 'B'}, N, K]{extra}.")
    return prepare_log_x0(out, guidance_scale=guidance_scale, truncation_rate=truncation_rate)

  return predict


def _initial_tokens(process: MaskAndReplace, key: jax.Array, batch_size: int, num_tokens: int,
                    init_tokens: Any, inpaint_mask: Any, start: int, start_from: str):
  """Start state ``x [B, N]``, the regenerate mask ``[B, N]`` and the fixed tokens (or None)."""
  k = process.num_classes
  shape = (batch_size, num_tokens)
  if init_tokens is None:
    if inpaint_mask is not None:
      raise ValueError("inpaint_mask needs init_tokens: the tokens to keep outside the mask.")
    return jnp.full(shape, k, jnp.int32), jnp.ones(shape, bool), None
  init = validation.check_integer_tokens("init_tokens", init_tokens, high=k).astype(jnp.int32)
  if init.shape != shape:
    raise ValueError(f"init_tokens has shape {init.shape}, expected [B, N] = {shape}.")
  if inpaint_mask is None:
    regenerate = jnp.ones(shape, bool)
  else:
    regenerate = jnp.asarray(inpaint_mask)
    if regenerate.dtype != jnp.bool_:
      raise TypeError(f"inpaint_mask must be boolean (True = regenerate), got {regenerate.dtype}.")
    if regenerate.shape not in (shape, shape[1:]):
      raise ValueError(f"inpaint_mask has shape {regenerate.shape}, expected [B, N] = {shape} "
                       f"or [N] = {shape[1:]}.")
    regenerate = jnp.broadcast_to(regenerate, shape)
  init_np = validation.concrete_value(init_tokens)
  mask_np = None if inpaint_mask is None else validation.concrete_value(inpaint_mask)
  if init_np is not None and (inpaint_mask is None or mask_np is not None):
    kept = ~np.broadcast_to(True if mask_np is None else mask_np, shape)
    if np.any(init_np[kept] == k):
      raise ValueError("init_tokens has [MASK] at positions that inpaint_mask keeps fixed; kept "
                       "positions must hold real codes.")
  if start_from == "mask":
    start_tokens = jnp.full(shape, k, jnp.int32)
  else:
    start_tokens = process.q_sample(key, init, start)
  return jnp.where(regenerate, start_tokens, init), regenerate, init
