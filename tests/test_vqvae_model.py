"""VQ autoencoder modules: output shapes, diffusers naming, quantizer maths, straight-through grads."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax import vqvae

TINY = dict(block_out_channels=(8, 16, 16), layers_per_block=1, down_attention=(False, False, True),
            latent_channels=6, vq_embed_dim=4, num_vq_embeddings=32, norm_num_groups=4)


def _images(b=2, size=16, seed=0):
  return jnp.asarray(np.random.RandomState(seed).uniform(-1, 1, (b, size, size, 3)), jnp.float32)


@pytest.fixture(scope="module")
def tiny():
  model = vqvae.VQAutoencoder(**TINY)
  variables = model.init(jax.random.key(0), _images(), train=True)
  return model, nn.meta.unbox(variables)


def test_output_shapes_of_every_method(tiny):
  model, variables = tiny
  x = _images(3, 16)
  latents, indices, aux = model.apply(variables, x, method="encode")
  assert model.downsample_factor == 4
  assert latents.shape == (3, 4, 4, 4) and aux["quantized"].shape == (3, 4, 4, 4)
  assert indices.shape == (3, 4, 4) and indices.dtype == jnp.int32
  assert int(indices.min()) >= 0 and int(indices.max()) < 32
  recon, aux = model.apply(variables, x)
  assert recon.shape == x.shape
  assert aux["counts"].shape == (32,) and float(aux["counts"].sum()) == 3 * 16
  assert aux["flat_latents"].shape == (48, 4) and aux["squared_error"].shape == (48,)
  assert model.apply(variables, indices, method="decode_indices").shape == x.shape
  # Rectangular images work too: the token grid follows.
  _, idx, _ = model.apply(variables, _images(1, 16)[:, :, :8], method="encode")
  assert idx.shape == (1, 4, 2)


def test_encoder_decoder_and_discriminator_shapes():
  kw = dict(block_out_channels=(8, 16), layers_per_block=2, mid_block_attention=False,
            norm_num_groups=4)
  enc = vqvae.Encoder(down_attention=(True, False), latent_channels=5, **kw)
  z, _ = enc.init_with_output(jax.random.key(0), _images(2, 8))
  assert z.shape == (2, 4, 4, 5)
  dec = vqvae.Decoder(up_attention=(False, True), **kw)
  (img, feats), _ = dec.init_with_output(jax.random.key(0), z, return_features=True)
  assert img.shape == (2, 8, 8, 3) and feats.shape == (2, 8, 8, 8)
  disc = vqvae.PatchDiscriminator(base_channels=8, num_layers=2, norm_num_groups=4)
  logits, _ = disc.init_with_output(jax.random.key(0), _images(2, 32))
  # 4x4 convs with padding 1: stride 2 halves (32 -> 16 -> 8), stride 1 shrinks by one (7, 6).
  assert logits.shape == (2, 6, 6, 1)


def test_parameter_names_follow_diffusers_vqmodel(tiny):
  _, variables = tiny
  paths = {"/".join(p) for p in flax.traverse_util.flatten_dict(variables["params"])}
  expected = {
      "encoder/conv_in/kernel", "encoder/down_blocks_0/resnets_0/norm1/scale",
      "encoder/down_blocks_0/downsamplers_0/conv/kernel",
      "encoder/down_blocks_1/resnets_0/conv_shortcut/kernel",
      "encoder/down_blocks_2/attentions_0/to_out_0/kernel",
      "encoder/mid_block/attentions_0/group_norm/scale", "encoder/mid_block/resnets_1/conv2/bias",
      "encoder/conv_norm_out/bias", "encoder/conv_out/kernel", "quant_conv/kernel",
      "quantize/embedding", "post_quant_conv/bias", "decoder/conv_in/kernel",
      "decoder/mid_block/attentions_0/to_q/kernel", "decoder/up_blocks_0/attentions_1/to_v/bias",
      "decoder/up_blocks_0/resnets_1/conv1/kernel", "decoder/up_blocks_1/upsamplers_0/conv/kernel",
      "decoder/up_blocks_2/resnets_0/conv_shortcut/kernel", "decoder/conv_out/kernel"}
  assert expected <= paths, sorted(expected - paths)
  assert not any("downsamplers" in p for p in paths if p.startswith("encoder/down_blocks_2"))
  assert not any("upsamplers" in p for p in paths if p.startswith("decoder/up_blocks_2"))
  assert not any("attentions" in p for p in paths if p.startswith("decoder/up_blocks_1"))


@pytest.mark.parametrize("fields", [
    TINY, dict(TINY, block_out_channels=(8,), down_attention=(False,), patch_size=4,
               local_encoder=True)], ids=["conv_encoder", "local_encoder"])
def test_every_parameter_has_logical_axis_names(fields):
  model = vqvae.VQAutoencoder(**fields)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), _images(), train=True))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  assert boxed["quantize"]["embedding"].names == ("codebook", "code_dim")


def test_quantizer_picks_the_nearest_code_like_brute_force():
  rng = np.random.RandomState(1)
  codebook = rng.normal(size=(64, 5)).astype(np.float32)
  z = rng.normal(size=(3, 4, 6, 5)).astype(np.float32)
  q = vqvae.VectorQuantizer(64, 5)
  params = {"params": {"embedding": jnp.asarray(codebook)}}
  quantized, indices, aux = q.apply(params, jnp.asarray(z))
  flat = z.reshape(-1, 5)
  d2 = ((flat[:, None, :] - codebook[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(np.asarray(indices).reshape(-1), d2.argmin(1))
  np.testing.assert_allclose(np.asarray(quantized).reshape(-1, 5), codebook[d2.argmin(1)], atol=1e-6)
  np.testing.assert_allclose(np.asarray(aux["squared_error"]), d2.min(1), rtol=1e-4, atol=1e-5)
  mse = np.mean((flat - codebook[d2.argmin(1)]) ** 2)
  np.testing.assert_allclose(float(aux["commitment_loss"]), mse, rtol=1e-5)
  np.testing.assert_allclose(float(aux["codebook_loss"]), mse, rtol=1e-5)
  p = np.bincount(d2.argmin(1), minlength=64) / len(flat)
  nz = p[p > 0]
  np.testing.assert_allclose(float(aux["perplexity"]), np.exp(-(nz * np.log(nz)).sum()), rtol=1e-5)


def test_straight_through_gradient_is_identity_and_losses_split_their_gradients():
  rng = np.random.RandomState(2)
  codebook = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
  z = jnp.asarray(rng.normal(size=(2, 3, 3, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=z.shape), jnp.float32)
  q = vqvae.VectorQuantizer(16, 3)

  def through(z, cb):
    return jnp.sum(w * q.apply({"params": {"embedding": cb}}, z)[0])

  gz, gcb = jax.grad(through, argnums=(0, 1))(z, codebook)
  np.testing.assert_allclose(np.asarray(gz), np.asarray(w), atol=1e-6)  # identity to the encoder
  assert float(jnp.abs(gcb).max()) == 0.0  # and nothing reaches the codebook that way
  # The commitment loss moves only the encoder output, the codebook loss only the codes.
  def loss(name):
    return lambda z, cb: q.apply({"params": {"embedding": cb}}, z)[2][name]

  gz_c, gcb_c = jax.grad(loss("commitment_loss"), argnums=(0, 1))(z, codebook)
  gz_b, gcb_b = jax.grad(loss("codebook_loss"), argnums=(0, 1))(z, codebook)
  assert float(jnp.abs(gcb_c).max()) == 0.0 and float(jnp.abs(gz_c).max()) > 0
  assert float(jnp.abs(gz_b).max()) == 0.0 and float(jnp.abs(gcb_b).max()) > 0


def test_autoencoder_straight_through_reaches_the_encoder():
  model = vqvae.VQAutoencoder(**dict(TINY, block_out_channels=(8,), down_attention=(False,),
                                     mid_block_attention=False))
  x = _images(1, 8)
  variables = nn.meta.unbox(model.init(jax.random.key(0), x))

  def grads(p):
    return jax.grad(lambda p: jnp.mean(model.apply({"params": p}, x)[0] ** 2))(p)

  g = grads(variables["params"])
  assert float(jnp.abs(g["encoder"]["conv_in"]["kernel"]).max()) > 0
  assert float(jnp.abs(g["quantize"]["embedding"]).max()) == 0.0
  # Bypassed quantizer (plain-autoencoder warm-up): the decoder sees the continuous latents.
  def bypass(v):
    latents = model.apply(v, x, method="encode_latents")
    return model.apply(v, x, use_quantizer=False), model.apply(v, latents, method="decode_latents")

  (recon_bypass, aux), direct = bypass(variables)
  np.testing.assert_allclose(np.asarray(recon_bypass), np.asarray(direct), atol=1e-5)
  assert float(aux["commitment_loss"]) == 0.0


def test_usage_and_ema_statistics_update_only_when_mutable():
  rng = np.random.RandomState(3)
  k, d, decay, usage_decay = 8, 2, 0.9, 0.5
  codebook = rng.normal(size=(k, d)).astype(np.float32)
  z = rng.normal(size=(1, 5, 4, d)).astype(np.float32)
  q = vqvae.VectorQuantizer(k, d, use_ema=True, ema_decay=decay, usage_decay=usage_decay)
  stats = {"usage": jnp.full((k,), 1 / k), "ema_count": jnp.asarray(rng.uniform(1, 2, k), jnp.float32),
           "ema_sum": jnp.asarray(rng.normal(size=(k, d)), jnp.float32)}
  variables = {"params": {"embedding": jnp.asarray(codebook)}, "vq_stats": stats}
  _, _, _ = q.apply(variables, jnp.asarray(z), train=True)  # immutable: nothing changes, no error
  (_, idx, _), new = q.apply(variables, jnp.asarray(z), train=True, mutable=["vq_stats"])
  idx = np.asarray(idx).reshape(-1)
  flat = z.reshape(-1, d)
  onehot = np.eye(k)[idx]
  new = new["vq_stats"]
  np.testing.assert_allclose(np.asarray(new["usage"]),
                             usage_decay / k + (1 - usage_decay) * onehot.mean(0), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new["ema_count"]),
                             decay * np.asarray(stats["ema_count"]) + (1 - decay) * onehot.sum(0),
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new["ema_sum"]),
                             decay * np.asarray(stats["ema_sum"]) + (1 - decay) * onehot.T @ flat,
                             rtol=1e-5, atol=1e-6)
  # Not in training mode: statistics stay.
  _, same = q.apply(variables, jnp.asarray(z), train=False, mutable=["vq_stats"])
  np.testing.assert_array_equal(np.asarray(same["vq_stats"]["usage"]), np.asarray(stats["usage"]))


def test_bad_inputs_are_named():
  model = vqvae.VQAutoencoder(**TINY)
  with pytest.raises(ValueError, match="not divisible"):
    model.init(jax.random.key(0), _images(1, 18))
  with pytest.raises(ValueError, match="NHWC"):
    model.init(jax.random.key(0), jnp.zeros((1, 3, 16, 16)))
  with pytest.raises(ValueError, match="norm_num_groups"):
    vqvae.VQAutoencoder(**dict(TINY, norm_num_groups=3)).init(jax.random.key(0), _images())
  with pytest.raises(ValueError, match="one entry per block"):
    vqvae.VQAutoencoder(**dict(TINY, down_attention=(True,))).init(jax.random.key(0), _images())


def test_patch_size_folds_pixels_into_channels_and_back():
  from vqd_jax.vqvae.autoencoder import depth_to_space, space_to_depth
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  folded = space_to_depth(x, 2)
  assert folded.shape == (2, 2, 3, 12)
  # Channel block (dy, dx) of patch (i, j) holds pixel (2i + dy, 2j + dx).
  np.testing.assert_array_equal(np.asarray(folded[1, 1, 2, 3:6]), np.asarray(x[1, 2, 5]))
  np.testing.assert_array_equal(np.asarray(folded[0, 0, 1, 6:9]), np.asarray(x[0, 1, 2]))
  np.testing.assert_array_equal(np.asarray(depth_to_space(folded, 2)), np.asarray(x))
  model = vqvae.VQAutoencoder(**dict(TINY, block_out_channels=(8,), down_attention=(False,),
                                     mid_block_attention=False, patch_size=2))
  assert model.downsample_factor == 2
  x = _images(1, 8)
  (recon, aux), variables = model.init_with_output(jax.random.key(0), x)
  assert recon.shape == x.shape and aux["indices"].shape == (1, 4, 4)
  assert variables["params"]["encoder"]["conv_in"]["kernel"].value.shape == (3, 3, 12, 8)


def test_local_encoder_codes_each_patch_from_its_own_pixels_only():
  # Ground truth by construction: a per-patch encoder must give identical latents for identical
  # patches wherever they sit, and editing one patch may move that position's latent alone. The
  # convolutional encoder fails both (neighbouring patches, edge padding, GroupNorm statistics).
  kw = dict(TINY, block_out_channels=(8,), down_attention=(False,), mid_block_attention=False,
            patch_size=4)
  local = vqvae.VQAutoencoder(**kw, local_encoder=True)
  conv = vqvae.VQAutoencoder(**kw)
  x = -np.ones((1, 16, 16, 3), np.float32)  # a black image: every 4x4 patch is the same
  x[0, 5:7, 9:12] = (1.0, -1.0, 1.0)  # one magenta object inside token (1, 2)
  edited = x.copy()
  edited[0, 12:16, 0:3] = (1.0, 1.0, -1.0)  # yellow pixels in token (3, 0) only
  for model, is_local in ((local, True), (conv, False)):
    variables = nn.meta.unbox(model.init(jax.random.key(0), jnp.asarray(x)))
    z = np.asarray(model.apply(variables, jnp.asarray(np.concatenate([x, edited])),
                               method="encode_latents"))
    background = np.ones((4, 4), bool)
    background[1, 2] = False
    spread = np.abs(z[0][background] - z[0][background][0]).max()
    changed = np.abs(z[1] - z[0]).max(axis=-1) > 0
    if is_local:
      assert spread == 0.0
      np.testing.assert_array_equal(changed, np.eye(4, dtype=bool)[3][:, None] & (np.arange(4) == 0))
    else:
      assert spread > 1e-4 and changed.sum() > 1
  assert local.downsample_factor == 4
  with pytest.raises(ValueError, match="local_encoder=True needs patch_size > 1"):
    vqvae.VQAutoencoder(**dict(kw, patch_size=1), local_encoder=True).init(
        jax.random.key(0), jnp.asarray(x))


def test_bfloat16_compute_stays_close_to_float32():
  model = vqvae.VQAutoencoder(**dict(TINY, block_out_channels=(8,), down_attention=(False,)))
  x = _images(1, 8)
  variables = nn.meta.unbox(model.init(jax.random.key(0), x))
  latents32 = model.apply(variables, x, method="encode_latents")
  latents16 = model.clone(dtype=jnp.bfloat16).apply(variables, x, method="encode_latents")
  assert latents16.dtype == jnp.bfloat16
  scale = float(jnp.abs(latents32).max())
  assert float(jnp.abs(latents16.astype(jnp.float32) - latents32).max()) < 0.05 * scale
