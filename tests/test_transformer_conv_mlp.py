"""The official ``Conv_MLP`` option of the denoiser (VQ-Diffusion-S), against PyTorch's Conv2d."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.interop.transformer import transformer_config_to_diffusers
from vqd_jax.transformer import Text2ImageTransformer, count_params, transformer_preset
from vqd_jax.layers import ConvFeedForward

H, W, D, HIDDEN, B = 3, 4, 6, 10, 2


def _random_like(variables, seed=0, scale=0.3):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape),
                                                      x.dtype), nn.meta.unbox(variables))


@pytest.mark.reference
def test_conv_mlp_matches_the_official_conv_mlp_in_pytorch():
  torch = pytest.importorskip("torch", reason="the reference is PyTorch's Conv2d")
  module = ConvFeedForward(HIDDEN, H, W)
  x = np.random.default_rng(1).standard_normal((B, H * W, D)).astype(np.float32)
  params = _random_like(module.init(jax.random.key(0), jnp.asarray(x)))
  ours = np.asarray(module.apply(params, jnp.asarray(x)))

  # Official Conv_MLP: rearrange 'b (h w) c -> b c h w', conv1 3x3 pad 1, GELU2, conv2, back.
  conv1 = torch.nn.Conv2d(D, HIDDEN, 3, padding=1)
  conv2 = torch.nn.Conv2d(HIDDEN, D, 3, padding=1)
  p = params["params"]
  with torch.no_grad():
    for conv, name in ((conv1, "conv1"), (conv2, "conv2")):
      conv.weight.copy_(torch.from_numpy(np.array(p[name]["kernel"]).transpose(3, 2, 0, 1)))
      conv.bias.copy_(torch.from_numpy(np.array(p[name]["bias"])))
    grid = torch.from_numpy(x).reshape(B, H, W, D).permute(0, 3, 1, 2)
    hidden = conv1(grid)
    out = conv2(hidden * torch.sigmoid(1.702 * hidden))
  expected = out.permute(0, 2, 3, 1).reshape(B, H * W, D).numpy()
  np.testing.assert_allclose(ours, expected, atol=2e-5)


def test_conv_mlp_model_trains_from_scratch_but_does_not_export():
  fields = transformer_preset("tiny", mlp_type="conv")
  model = Text2ImageTransformer(**fields)
  x_t = jnp.zeros((2, fields["height"] * fields["width"]), jnp.int32)
  text = jnp.zeros((2, 3, fields["cross_attention_dim"]))
  t = jnp.zeros((2,), jnp.int32)
  variables = model.init(jax.random.key(0), x_t, t, text)
  out = model.apply(variables, x_t, t, text)
  np.testing.assert_allclose(np.asarray(jnp.exp(out).sum(-1)), 1.0, atol=1e-5)
  ff = nn.meta.unbox(variables["params"])["transformer_blocks_0"]["ff"]
  width = fields["num_heads"] * fields["head_dim"]
  assert ff["conv1"]["kernel"].shape == (3, 3, width, 4 * width)
  # Every parameter carries logical axis names, so the sharding rules cover the kernels.
  leaves = jax.tree_util.tree_leaves(variables["params"],
                                     is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(x, nn.Partitioned) for x in leaves)
  with pytest.raises(ValueError, match="cannot be exported"):
    transformer_config_to_diffusers(fields)
  with pytest.raises(ValueError, match="needs 4x4 = 16 tokens"):
    ConvFeedForward(8, 4, 4).init(jax.random.key(0), jnp.zeros((1, 5, 2)))


def test_official_s_layout_with_the_conv_mlp():
  # VQ-Diffusion-S (cub200_s.yaml): 18 x 192 with Conv_MLP x2; reference notes count 35.9M.
  fields = transformer_preset("S", mlp_type="conv", mlp_ratio=2)
  assert abs(count_params(fields) / 1e6 - 35.9) < 0.05
  with pytest.raises(ValueError, match="mlp_type must be one of"):
    count_params(transformer_preset("tiny", mlp_type="moe"))
