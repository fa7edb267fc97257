"""``gradient_fence``: identity forward and backward that makes XLA CPU materialise a cotangent.

Without it, XLA CPU fuses the elementwise residual and LayerNorm backward chain of every later
block into each weight-gradient fusion that consumes it, so the backward pass of a stack of
blocks costs time quadratic in its depth (docs/experiments.md, 2026-12-05: the quickstart train
step 9.2 -> 11+ steps/s). Other backends see a plain identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def gradient_fence(x: jax.Array) -> jax.Array:
  """Returns ``x``; its cotangent is computed once, in its own buffer, on CPU."""
  return x


def _fence_fwd(x: jax.Array) -> tuple[jax.Array, None]:
  return x, None


def _materialised(g: jax.Array) -> jax.Array:
  # A conditional is a fusion boundary. Its predicate is always true (every float is equal or
  # unequal to itself, NaN included) but XLA cannot prove it, so the branch survives; the other
  # branch is never taken and only has to differ for the conditional not to be folded away.
  probe = g.reshape(-1)[0]
  always = (probe == probe) | (probe != probe)
  return jax.lax.cond(always, lambda v: v, jnp.zeros_like, g)


def _fence_bwd(_, g: jax.Array) -> tuple[jax.Array]:
  return (jax.lax.platform_dependent(g, cpu=_materialised, default=lambda v: v),)


gradient_fence.defvjp(_fence_fwd, _fence_bwd)
