"""Partitioned Dense, Embed and LayerNorm constructors, the residual-stream axes and GELU2.

Every parameter carries logical axis names (see the project's vocabulary), so sharding a model is a
rule table away (``vqd_jax.sharding``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Initializer = Callable[..., jax.Array]

# The official VQ-Diffusion code initialises Linear and Embedding weights with N(0, 0.02) and biases
# with zeros (Text2ImageTransformer._init_weights); we follow it for training from scratch.
DEFAULT_INIT_STDDEV = 0.02
# Residual-stream activations: ('activation_batch', 'activation_length', 'activation_embed').
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


def dense(features: int, axes: tuple[str | None, str | None], *, name: str, dtype: Dtype,
          param_dtype: Dtype, use_bias: bool = True, stddev: float = DEFAULT_INIT_STDDEV,
          kernel_init: Initializer | None = None) -> nn.Dense:
  """A ``nn.Dense`` whose kernel ``[in, out]`` is named ``axes`` and whose bias ``axes[1]``.

  The kernel starts as N(0, stddev) (``stddev=0``: zeros) unless ``kernel_init`` is given.
  """
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(kernel_init or nn.initializers.normal(stddev), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)))


def layer_norm(*, name: str, dtype: Dtype, param_dtype: Dtype, affine: bool = True,
               epsilon: float = 1e-5) -> nn.LayerNorm:
  """torch-compatible LayerNorm (two-pass variance, eps 1e-5 by default); statistics in float32."""
  return nn.LayerNorm(
      epsilon=epsilon, use_bias=affine, use_scale=affine, dtype=dtype, param_dtype=param_dtype,
      use_fast_variance=False, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)))


def constant_init(value: np.ndarray) -> Initializer:
  """An initialiser that returns ``value`` (and checks that the parameter has its shape)."""
  def init(key, shape, dtype=jnp.float32):
    del key
    if tuple(shape) != value.shape:
      raise ValueError(f"Initial table has shape {value.shape}, the parameter {tuple(shape)}.")
    return jnp.asarray(value, dtype)
  return init


def embed(num_embeddings: int, features: int, axes: tuple[str | None, str | None], *, name: str,
          dtype: Dtype, param_dtype: Dtype, stddev: float = DEFAULT_INIT_STDDEV,
          init: Initializer | None = None) -> nn.Embed:
  """A ``nn.Embed`` table ``[num_embeddings, features]`` named ``axes`` (``init``: N(0, stddev)).

  Out-of-range indices read as NaN (``jnp.take`` fill mode), which makes a bad timestep or token id
  visible in the output instead of silently clamping it.
  """
  return nn.Embed(
      num_embeddings, features, dtype=dtype, param_dtype=param_dtype, name=name,
      embedding_init=nn.with_logical_partitioning(init or nn.initializers.normal(stddev), axes))


def approximate_gelu(x: jax.Array) -> jax.Array:
  """``x·sigmoid(1.702x)``: the official "GELU2", diffusers ``ApproximateGELU`` and CLIP's
  ``quick_gelu``. Any shape in, the same shape out."""
  return x * jax.nn.sigmoid(1.702 * x)


def check_text_inputs(text_states: jax.Array, text_mask: jax.Array | None, batch: int,
                      width: int) -> None:
  """Raises a clear ValueError unless ``text_states`` is ``[batch, L, width]`` and ``text_mask``
  None or ``[batch, L]`` (the cross-attention inputs of every text-conditioned token model)."""
  if text_states.ndim != 3 or text_states.shape[0] != batch or text_states.shape[2] != width:
    raise ValueError(f"text_states must be [{batch}, length, {width}], got {text_states.shape}; "
                     "check cross_attention_dim against the text encoder.")
  length = text_states.shape[1]
  if text_mask is not None and text_mask.shape != (batch, length):
    raise ValueError(f"text_mask must be [{batch}, {length}] like text_states, got "
                     f"{text_mask.shape}.")
