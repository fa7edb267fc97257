"""Trace-time checks of the inputs of the diffusion functions.

Shapes and dtypes are static under ``jax.jit``, so they are always checked. Timestep *values* can
only be checked when they are concrete (Python ints, numpy arrays, or jax arrays outside a trace);
for traced timesteps the functions that take them document what happens instead.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x: Any) -> bool:
  """True when ``x`` is an abstract value inside a trace, so its contents are unknown.

  Ask this of the caller's raw argument: inside ``jax.jit`` even ``jnp.asarray(3)`` is a tracer.
  """
  return isinstance(x, jax.core.Tracer)


def concrete_value(x: Any) -> np.ndarray | None:
  """``x`` as a numpy array when its value is known at trace time, else None."""
  return None if is_traced(x) else np.asarray(x)


def check_integer_tokens(name: str, x: Any, ndim: int | None = 2, high: int | None = None
                         ) -> jax.Array:
  """Returns ``x`` as a jax array after checking it is an integer array of rank ``ndim``.

  With ``high``, concrete values must also lie in [0, high].
  """
  if high is not None:
    check_token_range(name, x, high)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(f"{name} must hold integer token ids, got dtype {x.dtype}; "
                    "pass class indices, not one-hot vectors or log-probabilities.")
  if ndim is not None and x.ndim != ndim:
    raise ValueError(f"{name} must have rank {ndim} ([B, N]), got shape {x.shape}.")
  return x


def check_token_range(name: str, x: Any, high: int) -> None:
  """For concrete ``x``, checks every id is in [0, high]."""
  values = concrete_value(x)
  if values is None or values.size == 0 or not np.issubdtype(values.dtype, np.integer):
    return
  if values.min() < 0 or values.max() > high:
    raise ValueError(f"{name} has ids in [{values.min()}, {values.max()}] but must lie in "
                     f"[0, {high}] (K real codes 0..K-1 plus [MASK] = K = {high}).")


def check_class_axis(name: str, log_p: Any, num_classes: int, what: str = "K real codes") -> jax.Array:
  """Returns ``log_p`` as float after checking its last (class) axis has ``num_classes`` entries."""
  log_p = jnp.asarray(log_p)
  if not jnp.issubdtype(log_p.dtype, jnp.floating):
    raise TypeError(f"{name} must be floating log-probabilities, got dtype {log_p.dtype}.")
  if log_p.ndim < 1 or log_p.shape[-1] != num_classes:
    hint = ""
    if log_p.ndim >= 1 and log_p.shape[-1] == num_classes + 1:
      hint = " It has one extra class: drop the [MASK] column (log p(x0) covers real codes only)."
    elif log_p.ndim >= 2 and log_p.shape[-2] == num_classes:
      hint = " The classes look like axis -2: this library is channels-last ([B, N, K])."
    raise ValueError(f"{name} has shape {log_p.shape}; its last axis must be the {num_classes} "
                     f"{what} (process num_classes={num_classes}).{hint}")
  return log_p


def check_time(name: str, t: Any, batch_size: int, low: int, high: int) -> jax.Array:
  """Checks a timestep argument and returns it as an int32 array of shape ``[]`` or ``[B]``.

  Args:
    name: argument name for messages.
    t: scalar or ``[B]`` integer timesteps.
    batch_size: B of the data it goes with.
    low, high: the inclusive range allowed when ``t`` is concrete.
  """
  values = concrete_value(t)
  t = jnp.asarray(t)
  if not jnp.issubdtype(t.dtype, jnp.integer):
    raise TypeError(f"{name} must be integer timesteps, got dtype {t.dtype}.")
  if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != batch_size):
    raise ValueError(f"{name} must be a scalar or have shape [B] = [{batch_size}], got {t.shape}.")
  if values is not None and values.size:
    if values.min() < low or values.max() > high:
      raise ValueError(f"{name} has values in [{values.min()}, {values.max()}] but must lie in "
                       f"[{low}, {high}].")
  return t.astype(jnp.int32)


def check_time_order(t: Any, t_prev: Any, name: str = "t_prev", strict: bool = True) -> None:
  """For concrete values, checks ``t_prev < t`` (or ``<=`` unless ``strict``) elementwise.

  Pass the caller's raw arguments (see ``is_traced``).
  """
  if is_traced(t) or is_traced(t_prev):
    return
  t_np, prev_np = np.broadcast_arrays(np.asarray(t), np.asarray(t_prev))
  if np.any(prev_np >= t_np) if strict else np.any(prev_np > t_np):
    relation = "<" if strict else "<="
    raise ValueError(f"{name} must not be later than t ({name} {relation} t), got "
                     f"t={t_np.tolist()} {name}={prev_np.tolist()}.")
