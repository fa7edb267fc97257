"""``patch_size``: one denoiser position per p x p block of tokens, checked against explicit loops."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.interop.transformer import transformer_config_to_diffusers
from vqd_jax.transformer import LatentImageEmbedding, Text2ImageTransformer, transformer_preset
from vqd_jax.transformer import patches

H, W, P, K = 4, 6, 2, 5  # token grid 4x6, blocks of 2x2 -> a 2x3 grid of positions


def _block_and_slot(n: int) -> tuple[int, int]:
  """Position m and slot s of token n, written out from the definition in patches.py."""
  row, col = divmod(n, W)
  m = (row // P) * (W // P) + col // P
  s = (row % P) * P + col % P
  return m, s


def _random_params(variables, seed=0, scale=0.5):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape),
                                                      x.dtype), nn.meta.unbox(variables))


def test_to_patches_places_every_token_in_its_block_and_slot():
  x = np.random.default_rng(0).integers(0, 100, (2, H * W, 3))
  blocks = np.asarray(patches.to_patches(jnp.asarray(x), H, W, P))
  assert blocks.shape == (2, (H // P) * (W // P), P * P, 3)
  for n in range(H * W):
    m, s = _block_and_slot(n)
    np.testing.assert_array_equal(blocks[:, m, s], x[:, n])
  np.testing.assert_array_equal(patches.from_patches(jnp.asarray(blocks), H, W, P), x)


def test_patch_size_must_divide_the_token_grid():
  with pytest.raises(ValueError, match="does not divide the 4x6 token grid"):
    patches.check_patch_grid(H, W, 4)
  with pytest.raises(ValueError, match="patch_size must be >= 1"):
    patches.check_patch_grid(H, W, 0)
  model = Text2ImageTransformer(num_classes=K, height=H, width=W, num_layers=1, num_heads=2,
                                head_dim=4, cross_attention_dim=8, patch_size=4)
  with pytest.raises(ValueError, match="does not divide"):
    model.init(jax.random.key(0), jnp.zeros((1, H * W), jnp.int32), jnp.zeros((1,), jnp.int32),
               jnp.zeros((1, 3, 8)))


def test_patched_embedding_is_a_sum_of_per_slot_tables_plus_block_positions():
  module = LatentImageEmbedding(K + 1, H, W, 8, patch_size=P)
  tokens = np.random.default_rng(1).integers(0, K + 1, (3, H * W))
  params = _random_params(module.init(jax.random.key(0), jnp.asarray(tokens)))
  out = np.asarray(module.apply(params, jnp.asarray(tokens)))
  p = params["params"]
  table = np.asarray(p["emb"]["embedding"])  # [p² (K+1), D]: slot s owns rows s(K+1) .. s(K+1)+K
  rows, cols = np.asarray(p["height_emb"]["embedding"]), np.asarray(p["width_emb"]["embedding"])
  expected = np.zeros((3, (H // P) * (W // P), 8), np.float32)
  for b in range(3):
    for n in range(H * W):
      m, s = _block_and_slot(n)
      expected[b, m] += table[s * (K + 1) + tokens[b, n]]
    for m in range(expected.shape[1]):
      expected[b, m] += rows[m // (W // P)] + cols[m % (W // P)]
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # An id out of range reads NaN, as with patch_size=1, instead of a neighbouring slot's row.
  bad = tokens.copy()
  bad[0, 0] = K + 1
  assert np.isnan(np.asarray(module.apply(params, jnp.asarray(bad)))[0, 0]).all()


def test_patched_head_returns_each_token_its_own_slot_of_the_block_output():
  model = Text2ImageTransformer(num_classes=K, height=H, width=W, num_layers=1, num_heads=2,
                                head_dim=4, cross_attention_dim=8, patch_size=P)
  x_t = jnp.asarray(np.random.default_rng(2).integers(0, K + 1, (2, H * W)))
  t, text = jnp.zeros((2,), jnp.int32), jnp.ones((2, 3, 8))
  params = nn.meta.unbox(model.init(jax.random.key(0), x_t, t, text))
  # Head kernel 0 and bias favouring class s for slot s: every token must pick its slot index.
  bias = np.zeros((P * P, K), np.float32)
  for s in range(P * P):
    bias[s, s] = 10.0
  params["params"]["out"] = {"kernel": jnp.zeros_like(params["params"]["out"]["kernel"]),
                             "bias": jnp.asarray(bias.reshape(-1))}
  log_p = np.asarray(model.apply(params, x_t, t, text))
  assert log_p.shape == (2, H * W, K)
  np.testing.assert_allclose(np.exp(log_p).sum(-1), 1.0, rtol=1e-5)
  expected = np.array([_block_and_slot(n)[1] for n in range(H * W)])
  np.testing.assert_array_equal(log_p.argmax(-1), np.broadcast_to(expected, (2, H * W)))


def test_cross_attention_bias_is_averaged_over_each_block():
  model = Text2ImageTransformer(num_classes=K, height=H, width=W, num_layers=1, num_heads=2,
                                head_dim=4, cross_attention_dim=8, patch_size=P)
  rng = np.random.default_rng(3)
  x_t = jnp.asarray(rng.integers(0, K + 1, (1, H * W)))
  t, text = jnp.zeros((1,), jnp.int32), jnp.asarray(rng.standard_normal((1, 3, 8)), jnp.float32)
  params = _random_params(model.init(jax.random.key(0), x_t, t, text))
  bias = rng.standard_normal((1, 1, H * W, 3)).astype(np.float32)
  block_mean = np.zeros_like(bias)
  for n in range(H * W):
    members = [k for k in range(H * W) if _block_and_slot(k)[0] == _block_and_slot(n)[0]]
    block_mean[..., n, :] = bias[..., members, :].mean(2)
  run = lambda b: np.asarray(model.apply(params, x_t, t, text, cross_attention_bias=jnp.asarray(b)))
  np.testing.assert_allclose(run(bias), run(block_mean), rtol=1e-5, atol=1e-6)
  assert np.abs(run(bias) - run(np.zeros_like(bias))).max() > 1e-3


def test_patched_model_does_not_export_to_diffusers():
  with pytest.raises(ValueError, match="patch_size=2 cannot be exported"):
    transformer_config_to_diffusers(transformer_preset("tiny", patch_size=2))
