"""Autoencoder losses against hand computations, and LPIPS against a PyTorch implementation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax import vqvae
from vqd_jax.interop import lpips as lpips_io


def test_reconstruction_losses():
  a = jnp.asarray([[0.5, -1.0], [0.0, 1.0]])
  b = jnp.asarray([[0.0, 1.0], [0.0, 0.0]])
  assert float(vqvae.reconstruction_loss(a, b, "l1")) == pytest.approx((0.5 + 2 + 0 + 1) / 4)
  assert float(vqvae.reconstruction_loss(a, b, "l2")) == pytest.approx((0.25 + 4 + 0 + 1) / 4)
  with pytest.raises(ValueError, match="'l1' or 'l2'"):
    vqvae.reconstruction_loss(a, b, "l3")


def test_hinge_losses_by_hand():
  real = jnp.asarray([2.0, 0.5, -1.0])
  fake = jnp.asarray([-2.0, 0.0, 3.0])
  # relu(1 - real) = [0, 0.5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 4] -> mean 5/3.
  assert float(vqvae.hinge_discriminator_loss(real, fake)) == pytest.approx(0.5 * (5 / 6 + 5 / 3))
  assert float(vqvae.generator_loss(fake)) == pytest.approx(-1 / 3)
  assert float(vqvae.adopt_weight(0.8, jnp.int32(9), 10)) == 0.0
  assert float(vqvae.adopt_weight(0.8, jnp.int32(10), 10)) == pytest.approx(0.8)


def test_adaptive_weight_by_hand():
  assert float(vqvae.adaptive_gan_weight(jnp.float32(3.0), jnp.float32(1.5))) == pytest.approx(
      3.0 / (1.5 + 1e-4))
  assert float(vqvae.adaptive_gan_weight(jnp.float32(1.0), jnp.float32(0.0))) == pytest.approx(1e4)
  grad = jax.grad(lambda r: vqvae.adaptive_gan_weight(r, jnp.float32(2.0)))(jnp.float32(1.0))
  assert float(grad) == 0.0  # a constant for the optimizer


def test_last_layer_grad_norm_equals_full_gradient_norm():
  rng = np.random.RandomState(0)
  feats = jnp.asarray(rng.normal(size=(2, 6, 5, 4)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 3)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(3,)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(2, 6, 5, 3)), jnp.float32)
  conv = nn.Conv(3, (3, 3), padding="SAME")

  def loss(out):
    return jnp.mean((out - target) ** 2) + jnp.mean(jnp.sin(out))

  def loss_of_kernel(k):
    return loss(conv.apply({"params": {"kernel": k, "bias": bias}}, feats))

  out = conv.apply({"params": {"kernel": kernel, "bias": bias}}, feats)
  expected = float(jnp.linalg.norm(jax.grad(loss_of_kernel)(kernel)))
  got = float(vqvae.last_layer_grad_norm(feats, kernel, jax.grad(loss)(out)))
  assert got == pytest.approx(expected, rel=1e-4)


# -- LPIPS vs a PyTorch implementation of the lpips package's forward ---------------------------------

def _torch_lpips(torch, sd, x, y):
  """LPIPS(vgg) as in the lpips package, written out from its definition."""
  f = torch.nn.functional
  shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
  scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

  def feats(z):
    z = (z - shift) / scale
    out = []
    for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28):
      if i in (5, 10, 17, 24):
        z = f.max_pool2d(z, 2, 2)
      z = f.relu(f.conv2d(z, sd[f"net.slice1.{i}.weight"], sd[f"net.slice1.{i}.bias"], padding=1))
      if i in (2, 7, 14, 21, 28):
        out.append(z)
    return out

  total = 0
  for k, (a, b) in enumerate(zip(feats(x), feats(y))):
    a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    total = total + f.conv2d((a - b) ** 2, sd[f"lin{k}.model.1.weight"]).mean((2, 3), keepdim=True)
  return total.view(-1)


@pytest.mark.reference
def test_lpips_matches_torch_reference_from_local_files(tmp_path):
  torch = pytest.importorskip("torch", reason="the LPIPS reference is written in PyTorch")
  safetensors_torch = pytest.importorskip("safetensors.torch", reason="writes the weights file")
  gen = torch.Generator().manual_seed(0)
  sd, in_ch = {}, 3
  for i, out_ch in vqvae.lpips.VGG16_CONVS:
    he_std = (2 / (9 * in_ch)) ** 0.5  # keeps activations O(1) through 13 random convs
    sd[f"net.slice1.{i}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=gen) * he_std
    sd[f"net.slice1.{i}.bias"] = torch.randn(out_ch, generator=gen) * 0.01
    in_ch = out_ch
  for k, c in enumerate((64, 128, 256, 512, 512)):
    sd[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1, generator=gen) * 0.1
  sd["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)  # buffers in the lpips file are ignored
  # Trunk and heads in two files, as the lpips package ships them.
  trunk = {k: v for k, v in sd.items() if k.startswith("net.")}
  heads = {k: v for k, v in sd.items() if not k.startswith("net.")}
  safetensors_torch.save_file(trunk, str(tmp_path / "vgg16.safetensors"))
  torch.save(heads, str(tmp_path / "lpips_heads.pth"))
  params = lpips_io.load_lpips_params(tmp_path / "vgg16.safetensors", tmp_path / "lpips_heads.pth")

  rng = np.random.RandomState(0)
  x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(size=x.shape).astype(np.float32) * 0.3, -1, 1)
  lpips = jax.jit(vqvae.LPIPS().apply)
  got = np.asarray(lpips({"params": params}, jnp.asarray(x), jnp.asarray(y)))
  with torch.no_grad():
    want = _torch_lpips(torch, sd, torch.from_numpy(x).permute(0, 3, 1, 2),
                        torch.from_numpy(y).permute(0, 3, 1, 2)).numpy()
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-5)
  assert float(jnp.abs(lpips({"params": params}, jnp.asarray(x), jnp.asarray(x))).max()) < 1e-6
  with pytest.raises(ValueError, match="missing"):
    lpips_io.load_lpips_params(tmp_path / "lpips_heads.pth")
