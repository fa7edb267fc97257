"""gradient_fence: identity in both directions, and a fusion boundary that XLA CPU keeps."""

import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.layers import gradient_fence


def _loss(x, fence):
  y = 2.0 * x
  if fence:
    y = gradient_fence(y)
  return jnp.sum(jnp.sin(y) ** 2)


def test_forward_is_identity_and_gradient_matches_closed_form():
  x = jnp.linspace(-2.0, 2.0, 24, dtype=jnp.float32).reshape(4, 6)
  np.testing.assert_array_equal(gradient_fence(x), x)
  # d/dx sin^2(2x) = 2 sin(4x).
  np.testing.assert_allclose(jax.grad(_loss)(x, True), 2 * np.sin(4 * np.asarray(x)), atol=1e-5)
  np.testing.assert_array_equal(jax.jit(jax.grad(_loss), static_argnums=1)(x, True),
                                jax.jit(jax.grad(_loss), static_argnums=1)(x, False))


def test_non_finite_cotangents_pass_through_unchanged():
  # The always-true predicate must stay true for NaN and infinity in the probed element.
  for bad in (np.nan, np.inf, -np.inf):
    g = jnp.array([bad, 1.0, -2.0], jnp.float32)
    _, vjp = jax.vjp(gradient_fence, jnp.zeros(3))
    np.testing.assert_array_equal(jax.jit(vjp)(g)[0], g)


def test_compiled_cpu_backward_keeps_the_conditional():
  # If XLA ever folds the predicate, the fence silently stops working: this catches it.
  x = jnp.ones((8, 16), jnp.float32)
  hlo = jax.jit(jax.grad(_loss), static_argnums=1).lower(x, True).compile().as_text()
  assert "conditional" in hlo
