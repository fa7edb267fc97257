"""The prompt switch: which steps see which conditioning (recorded inside the jitted sampler), the
step fraction behind each ``switch_below``, the prompt pairs, and the command end to end."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_coverage import covers
from vqd_jax import diffusion, evaluate
from vqd_jax.diffusion import sampling as sampling_lib
from vqd_jax.evaluation import prompt_switch
from vqd_jax.evaluation import shapes as shapes_eval
from vqd_jax.inference.generate import TokenGenerator
from vqd_jax.text import Conditioning

K, N, T = 6, 4, 20


class _Recorder(nn.Module):
  """Predicts code ``states[:, 0, 0]`` everywhere and records ``(t, that code)`` per call."""
  num_tokens: int = N

  @nn.compact
  def __call__(self, x, t, states, mask, global_cond=None, scaled_cross_attention_bias=None):
    code = states[:, 0, 0].astype(jnp.int32)
    jax.debug.callback(lambda tt, cc: CALLS.append((int(tt[-1]), int(cc[-1]))), t, code)
    return jnp.log(jax.nn.one_hot(code, K) * (1 - 1e-6) + 1e-6 / K)[:, None].repeat(N, 1)


CALLS = []


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_the_first_fraction_of_steps_sees_prompt_a(fraction):
  CALLS.clear()
  gen = TokenGenerator(_Recorder(), diffusion.MaskAndReplace(K, T))
  settings = diffusion.SamplerConfig(num_steps=10, guidance_scale=2.0)
  times = sampling_lib.evaluation_times(T - 1, 10)
  below = prompt_switch.switch_below(fraction, times, T)
  states = lambda code: jnp.full((2, 3, 4), float(code))
  run = jax.jit(lambda below: gen.generate_tokens(
      {}, Conditioning(states(1)), jax.random.key(0), settings, null=Conditioning(states(0)),
      switch_to=Conditioning(states(2)), switch_below=below))
  tokens = jax.block_until_ready(run(jnp.int32(below)))
  # One call per step; the last row is a conditional one (rows [:B] are the null's).
  assert [t for t, _ in CALLS] == times.tolist()
  used_a = round(fraction * len(times))
  assert [c for _, c in CALLS] == [1] * used_a + [2] * (len(times) - used_a)
  assert np.all(np.asarray(tokens) == (1 if fraction == 1.0 else 2))


def test_prompt_pairs_differ_in_colour_and_shape():
  pairs = prompt_switch.prompt_pairs(12, 32)
  assert len(pairs) == 12
  for a, b in pairs:
    (oa,), (ob,) = shapes_eval.parse_caption(a).objects, shapes_eval.parse_caption(b).objects
    assert oa.color != ob.color and oa.shape != ob.shape


@covers("evaluate prompt-switch --workdir", "evaluate prompt-switch --out",
        "evaluate prompt-switch --num-pairs", "evaluate prompt-switch --seed")
def test_the_command_reports_every_fraction_and_block(tiny_run, tmp_path, monkeypatch):
  calls, program = [], prompt_switch._program  # pylint: disable=protected-access

  def recording(pipe, settings):
    run = program(pipe, settings)
    def call(params, ids_a, mask_a, ids_b, mask_b, key, below):
      calls.append((np.asarray(ids_a), np.asarray(jax.random.key_data(key))))
      return run(params, ids_a, mask_a, ids_b, mask_b, key, below)
    return call
  monkeypatch.setattr(prompt_switch, "_program", recording)
  out = str(tmp_path / "switch")
  assert evaluate.main(["prompt-switch", "--workdir", tiny_run, "--out", out,
                        "--num-pairs", "3", "--seed", "5"]) == 0
  with open(os.path.join(out, "prompt_switch.json"), encoding="utf-8") as f:
    report = json.load(f)
  assert report["workdir"] == tiny_run and report["checkpoint_step"] == 4
  # One sampling call per fraction, each on the 3 pairs' A prompts with the key of --seed.
  assert report["num_pairs"] == 3 and len(calls) == len(prompt_switch.FRACTIONS)
  for ids_a, key in calls:
    assert len(ids_a) == 3
    np.testing.assert_array_equal(key, jax.random.key_data(jax.random.key(5)))
  assert list(report["switch"]) == [f"{f:g}" for f in prompt_switch.FRACTIONS]
  for row in report["switch"].values():
    assert 0 <= row["A"][0] <= 1 and 0 <= row["B"][0] <= 1
  shares = np.array(list(report["cross_attention_share"].values()))
  assert shares.shape[1] == 1 and np.all((shares > 0) & (shares < 1))  # tiny: one block
