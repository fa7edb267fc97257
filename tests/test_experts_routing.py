"""Routing an expert ensemble in the one jitted sampler: each step runs the expert owning its t."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax import diffusion
from vqd_jax.diffusion.experts import ExpertIntervals, ExpertParams, stack_experts
from vqd_jax.inference.generate import TokenGenerator
from vqd_jax.text.conditioner import Conditioning
from vqd_jax.transformer import Text2ImageTransformer

K, T, N, L, D = 6, 10, 4, 3, 5
BOUNDS = (3, 7)  # experts own t 0..2, 3..6, 7..9


class MarkedDenoiser(nn.Module):
  """Predicts code ``round(code)`` almost surely and reports ``(code, t)`` of every call."""
  num_tokens: int = N

  @nn.compact
  def __call__(self, x, t, states, mask=None, global_cond=None, scaled_cross_attention_bias=None):
    code = self.param("code", nn.initializers.zeros, ())
    jax.debug.callback(_record, code, t, ordered=True)
    logits = -20.0 * jnp.square(jnp.arange(K, dtype=jnp.float32) - code)
    out = jax.nn.log_softmax(logits) + 0.0 * states.sum() + 0.0 * x[..., None]
    return jnp.broadcast_to(out, x.shape + (K,))


CALLS = []


def _record(code, t):
  CALLS.append((int(round(float(code))), np.asarray(t).tolist()))


def _ensemble():
  stacked = {"code": jnp.arange(3, dtype=jnp.float32)}  # expert e always predicts code e
  return ExpertParams(stacked, ExpertIntervals(BOUNDS, T))


def _owner(t):
  return sum(t >= b for b in BOUNDS)


def _sample(settings, **kwargs):
  gen = TokenGenerator(MarkedDenoiser(), diffusion.MaskAndReplace(K, T), chunk_rows=None)
  cond = Conditioning(jnp.ones((2, L, D)))
  null = Conditioning(jnp.zeros((2, L, D)))
  program = jax.jit(lambda p, key, init, mask: gen.generate_tokens(
      p, cond, key, settings, null=null, init_tokens=init, inpaint_mask=mask))
  CALLS.clear()
  tokens = program(_ensemble(), jax.random.key(0), kwargs.get("init"), kwargs.get("mask"))
  jax.effects_barrier()
  return np.asarray(tokens), list(CALLS)


def _check_routing(calls, times):
  assert [c[1][0] for c in calls] == list(times)  # one call per step, in order
  for code, ts in calls:
    assert len(set(ts)) == 1 and code == _owner(ts[0])


def test_every_step_runs_the_expert_owning_its_t_at_every_boundary():
  tokens, calls = _sample(diffusion.SamplerConfig(num_steps=T))
  _check_routing(calls, range(T - 1, -1, -1))  # t = 2|3 and 6|7 both sampled
  assert sorted({c[0] for c in calls}) == [0, 1, 2]
  assert (tokens == 0).all()  # the last draw comes from the t = 0 expert's p(x0)


@pytest.mark.parametrize("settings", [
    diffusion.SamplerConfig(num_steps=4, guidance_scale=3.0, truncation_rate=0.8),
    diffusion.SamplerConfig(num_steps=12, purity_weight=1.0, guidance_scale=2.0)])
def test_guidance_fast_steps_truncation_and_purity_route_correctly(settings):
  tokens, calls = _sample(settings)
  times = diffusion.evaluation_times(T - 1, settings.num_steps)
  _check_routing(calls, times)
  assert all(len(ts) == 4 for _, ts in calls)  # guided: [null, prompt] rows in one call
  assert tokens.min() >= 0 and tokens.max() < K


def test_inpainting_with_an_ensemble_keeps_tokens_and_routes():
  init = jnp.full((2, N), 5, jnp.int32)
  mask = jnp.asarray([True, False, True, False])
  settings = diffusion.SamplerConfig(num_steps=5, guidance_scale=2.0)
  tokens, calls = _sample(settings, init=init, mask=mask)
  _check_routing(calls, diffusion.evaluation_times(T - 1, 5))
  assert (tokens[:, ~np.asarray(mask)] == 5).all() and (tokens[:, np.asarray(mask)] == 0).all()


def test_denoise_routes_rows_with_different_owners():
  gen = TokenGenerator(MarkedDenoiser(), diffusion.MaskAndReplace(K, T))
  t = jnp.asarray([0, 2, 3, 6, 7, 9])
  x = jnp.zeros((6, N), jnp.int32)
  CALLS.clear()
  out = jax.jit(gen.denoise)(_ensemble(), x, t, Conditioning(jnp.ones((6, L, D))))
  jax.effects_barrier()
  np.testing.assert_array_equal(np.argmax(out, -1)[:, 0], [_owner(int(s)) for s in t])


def test_ensemble_of_copies_samples_exactly_like_the_single_model():
  model = Text2ImageTransformer(num_classes=K, height=2, width=2, num_layers=1, num_heads=2,
                                head_dim=4, cross_attention_dim=D, num_embeds_ada_norm=T)
  states = jnp.asarray(np.random.default_rng(0).normal(size=(2, L, D)), jnp.float32)
  params = model.init(jax.random.key(1), jnp.zeros((2, N), jnp.int32), jnp.zeros(2, jnp.int32),
                      states)["params"]
  gen = TokenGenerator(model, diffusion.MaskAndReplace(K, T))
  settings = diffusion.SamplerConfig(num_steps=5, guidance_scale=2.0, truncation_rate=0.9)
  program = jax.jit(lambda p, key: gen.generate_tokens(
      p, Conditioning(states), key, settings, null=Conditioning(jnp.zeros_like(states))))
  single = program(params, jax.random.key(3))
  ensemble = ExpertParams(stack_experts(params, 3), ExpertIntervals(BOUNDS, T))
  np.testing.assert_array_equal(program(ensemble, jax.random.key(3)), single)
