"""The AR stage: a text-conditioned autoregressive transformer over frozen VQ tokens.

The loss is the cross-entropy of every code given the codes before it in raster order (teacher
forcing), in nats per token. With ``config.ctf.num_clusters`` the classes are CTF's coarse labels
(its first stage, ``configs/ctf.py``). Captions are dropped to the learned null embedding at
``data.caption_drop_rate`` so that sampling can use classifier-free guidance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vqd_jax import autoregressive, build
from vqd_jax import text as text_lib
from vqd_jax.training.token_task import TokenModelTask


def token_cross_entropy(log_p: jax.Array, targets: jax.Array) -> tuple[jax.Array, dict]:
  """Mean −log p of ``targets [B, N]`` under ``log_p [B, N, K]``, with top-1 accuracy."""
  nll = -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
  accuracy = jnp.mean((jnp.argmax(log_p, axis=-1) == targets).astype(jnp.float32))
  loss = jnp.mean(nll)
  return loss, {"loss": loss, "nll_per_token": loss, "accuracy": accuracy}


class ARTask(TokenModelTask):
  """The AR model's stage (see the module docstring)."""

  def build_model(self) -> autoregressive.ARTransformer:
    return build.ar_model(self.config, self.num_classes, self.grid, self.conditioner.width)

  @property
  def num_tokens(self) -> int:
    return self.model.num_tokens

  def init_model(self, key, states, mask):
    tokens = jnp.zeros((states.shape[0], self.model.num_tokens), jnp.int32)
    return self.model.init(key, tokens, states, mask)["params"]

  def inputs_and_targets(self, batch) -> tuple[jax.Array, jax.Array]:
    """``([B, N] model inputs, [B, N] targets)``: the codes (or coarse labels) both times; the
    model shifts its inputs itself."""
    targets = self.targets(batch)
    return targets, targets

  def log_probs(self, transformer_params, inputs, cond: text_lib.Conditioning, **kwargs):
    """``[B, N, K]`` log-probabilities of the targets' classes for ``inputs``."""
    return self.model.apply({"params": transformer_params}, inputs, cond.states, cond.mask,
                            **kwargs)

  def step_loss(self, params, batch, key, extra, step):
    del extra, step
    k_drop, k_dropout = jax.random.split(key)
    inputs, targets = self.inputs_and_targets(batch)
    cond = self.conditioning(params, batch, k_drop)
    dropout = self.config.model.dropout > 0
    log_p = self.log_probs(params["transformer"], inputs, cond, deterministic=not dropout,
                           rngs={"dropout": k_dropout} if dropout else None)
    loss, metrics = token_cross_entropy(log_p, targets)
    return loss, (metrics, None)

  def preview_tokens(self, params, cond: text_lib.Conditioning, null: text_lib.Conditioning,
                     key: jax.Array) -> jax.Array:
    settings = autoregressive.ARSamplerConfig(**self.config.sampling.to_dict())
    return autoregressive.ARGenerator(self.model).generate_tokens(
        params["transformer"], cond, key, settings, null=null)
