"""Autoencoder losses: pixel reconstruction, hinge GAN, and the adaptive GAN weight (taming VQGAN).

The adaptive weight balances the GAN term against the reconstruction term by the ratio of their
gradient norms at the decoder's last layer, ``|grad_W L_rec| / (|grad_W L_gan| + 1e-4)``, clipped to
``[0, 1e4]`` and treated as a constant (Esser et al. 2021, eq. 7).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reconstruction_loss(recon: jax.Array, target: jax.Array, kind: str = "l1") -> jax.Array:
  """Mean ``|recon - target|`` ('l1') or ``(recon - target)^2`` ('l2') over all elements."""
  diff = recon.astype(jnp.float32) - target.astype(jnp.float32)
  if kind == "l1":
    return jnp.mean(jnp.abs(diff))
  if kind == "l2":
    return jnp.mean(diff ** 2)
  raise ValueError(f"loss.recon must be 'l1' or 'l2', got {kind!r}.")


def hinge_discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """``(mean relu(1 - D(x)) + mean relu(1 + D(G(z)))) / 2``."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def generator_loss(logits_fake: jax.Array) -> jax.Array:
  """The generator's hinge objective, ``-mean D(G(z))``."""
  return -jnp.mean(logits_fake)


def adaptive_gan_weight(rec_grad_norm: jax.Array, gan_grad_norm: jax.Array,
                        max_weight: float = 1e4) -> jax.Array:
  """``clip(rec / (gan + 1e-4), 0, max_weight)``, with gradients stopped."""
  weight = rec_grad_norm / (gan_grad_norm + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))


def last_layer_grad_norm(features: jax.Array, kernel: jax.Array, output_grad: jax.Array
                         ) -> jax.Array:
  """Norm of ``dL/dW`` for the final 3x3 stride-1 SAME conv ``y = conv(features, W) + b``.

  Args:
    features: its input ``[B, H, W, C]``.
    kernel: ``W`` ``[3, 3, C, O]``.
    output_grad: ``dL/dy`` ``[B, H, W, O]``.

  Only the kernel gradient is needed, so this costs one conv instead of a backward pass through the
  whole decoder.
  """
  def conv(w):
    return jax.lax.conv_general_dilated(
        features.astype(jnp.float32), w.astype(jnp.float32), window_strides=(1, 1),
        padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  _, vjp = jax.vjp(conv, kernel.astype(jnp.float32))
  (grad,) = vjp(output_grad.astype(jnp.float32))
  return jnp.sqrt(jnp.sum(grad ** 2))


def adopt_weight(weight: float, step: jax.Array, start: int) -> jax.Array:
  """``weight`` from step ``start`` on, 0 before (the GAN is switched on late)."""
  return jnp.where(step >= start, weight, 0.0)
