"""The Mix-FFN option of the denoiser (``mlp_type="mix"``), against PyTorch's Linear and a depthwise
(``groups = channels``) Conv2d."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.interop.transformer import transformer_config_to_diffusers
from vqd_jax.transformer import Text2ImageTransformer, count_params, transformer_preset
from vqd_jax.layers import MixFeedForward, depthwise_conv3x3

H, W, D, HIDDEN, B = 3, 4, 6, 10, 2


def test_depthwise_conv_matches_an_explicit_neighbour_sum():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((B, H, W, HIDDEN)).astype(np.float32)
  kernel = rng.standard_normal((3, 3, HIDDEN)).astype(np.float32)
  expected = np.zeros_like(x)
  for i in range(H):
    for j in range(W):
      for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
          if 0 <= i + dy < H and 0 <= j + dx < W:  # zero padding outside the grid
            expected[:, i, j] += x[:, i + dy, j + dx] * kernel[dy + 1, dx + 1]
  np.testing.assert_allclose(np.asarray(depthwise_conv3x3(jnp.asarray(x), jnp.asarray(kernel))),
                             expected, atol=1e-5)


@pytest.mark.reference
def test_mix_mlp_matches_linear_depthwise_conv_gelu_linear_in_pytorch():
  torch = pytest.importorskip("torch", reason="the reference is PyTorch's Linear and Conv2d")
  module = MixFeedForward(HIDDEN, H, W)
  x = np.random.default_rng(1).standard_normal((B, H * W, D)).astype(np.float32)
  rng = np.random.default_rng(2)
  params = jax.tree_util.tree_map(lambda v: jnp.asarray(0.3 * rng.standard_normal(v.shape), v.dtype),
                                  nn.meta.unbox(module.init(jax.random.key(0), jnp.asarray(x))))
  ours = np.asarray(module.apply(params, jnp.asarray(x)))

  p = jax.tree_util.tree_map(np.array, params["params"])
  fc1, fc2 = torch.nn.Linear(D, HIDDEN), torch.nn.Linear(HIDDEN, D)
  dw = torch.nn.Conv2d(HIDDEN, HIDDEN, 3, padding=1, groups=HIDDEN, bias=False)
  with torch.no_grad():
    for lin, name in ((fc1, "fc1"), (fc2, "fc2")):
      lin.weight.copy_(torch.from_numpy(p[name]["kernel"].T))
      lin.bias.copy_(torch.from_numpy(p[name]["bias"]))
    dw.weight.copy_(torch.from_numpy(p["dwconv"].transpose(2, 0, 1)[:, None]))  # [C, 1, 3, 3]
    hidden = fc1(torch.from_numpy(x)).reshape(B, H, W, HIDDEN).permute(0, 3, 1, 2)
    hidden = dw(hidden).permute(0, 2, 3, 1).reshape(B, H * W, HIDDEN)
    expected = fc2(hidden * torch.sigmoid(1.702 * hidden)).numpy()
  np.testing.assert_allclose(ours, expected, atol=2e-5)


def test_mix_mlp_model_runs_with_patches_and_refuses_export():
  fields = transformer_preset("tiny", mlp_type="mix", mlp_ratio=2, patch_size=2)
  model = Text2ImageTransformer(**fields)
  n = fields["height"] * fields["width"]
  x_t = jnp.asarray(np.random.default_rng(0).integers(0, fields["num_classes"] + 1, (2, n)))
  text = jnp.zeros((2, 3, fields["cross_attention_dim"]))
  t = jnp.zeros((2,), jnp.int32)
  variables = model.init(jax.random.key(0), x_t, t, text)
  out = model.apply(variables, x_t, t, text)
  assert out.shape == (2, n, fields["num_classes"])
  np.testing.assert_allclose(np.asarray(jnp.exp(out).sum(-1)), 1.0, atol=1e-5)
  ff = nn.meta.unbox(variables["params"])["transformer_blocks_0"]["ff"]
  width = fields["num_heads"] * fields["head_dim"]
  assert ff["fc1"]["kernel"].shape == (width, 2 * width)
  assert ff["dwconv"].shape == (3, 3, 2 * width)
  # fc1 + fc2 (+ biases) + 9 weights per hidden channel, against the fc MLP's two Linears.
  fc_fields = dict(fields, mlp_type="fc")
  assert count_params(fields) - count_params(fc_fields) == fields["num_layers"] * 9 * 2 * width
  with pytest.raises(ValueError, match="cannot be exported"):
    transformer_config_to_diffusers(dict(fields, mlp_ratio=4, patch_size=1))
  with pytest.raises(ValueError, match="needs 4x4 = 16 tokens"):
    MixFeedForward(8, 4, 4).init(jax.random.key(0), jnp.zeros((1, 5, 2)))
