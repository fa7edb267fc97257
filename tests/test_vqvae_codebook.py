"""Codebook upkeep: EMA, k-means init, dead-code restart, maintenance schedule, pruning."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax import vqvae


def test_codebook_from_ema_matches_laplace_smoothed_means():
  rng = np.random.RandomState(0)
  count = np.array([3.0, 0.0, 1.5, 7.0], np.float32)
  sums = rng.normal(size=(4, 3)).astype(np.float32)
  eps = 1e-3
  n = count.sum()
  expected = sums / ((count + eps) / (n + 4 * eps) * n)[:, None]
  np.testing.assert_allclose(np.asarray(vqvae.codebook_from_ema(jnp.asarray(count),
                                                                 jnp.asarray(sums), eps)),
                             expected, rtol=1e-5)


def test_restart_replaces_exactly_the_dead_codes_with_encoder_outputs():
  rng = np.random.RandomState(1)
  k = 10
  codebook = jnp.asarray(rng.normal(size=(k, 4)), jnp.float32)
  usage = np.full((k,), 1.0 / k, np.float32)
  dead_ids = [1, 4, 7]
  usage[dead_ids] = 0.001 / k   # below threshold 0.05 / K
  usage[2] = 0.06 / k           # just above: stays
  samples = jnp.asarray(rng.normal(size=(50, 4)) + 10.0, jnp.float32)  # far from every code
  errors = jnp.ones((50,))
  new, new_usage, dead = vqvae.restart_dead_codes(jax.random.key(0), codebook, jnp.asarray(usage),
                                                  samples, errors, threshold=0.05)
  dead = np.asarray(dead)
  assert sorted(np.flatnonzero(dead)) == dead_ids
  new, codebook = np.asarray(new), np.asarray(codebook)
  live = ~dead
  np.testing.assert_array_equal(new[live], codebook[live])
  sample_rows = {tuple(r) for r in np.asarray(samples)}
  assert all(tuple(r) in sample_rows for r in new[dead])
  np.testing.assert_allclose(np.asarray(new_usage)[dead], 1.0 / k)
  np.testing.assert_array_equal(np.asarray(new_usage)[live], usage[live])


def test_restart_samples_in_proportion_to_quantization_error():
  samples = jnp.asarray(np.arange(4, dtype=np.float32)[:, None].repeat(2, 1))
  errors = jnp.asarray([0.0, 0.0, 1.0, 3.0])  # well-represented rows are never picked
  usage = jnp.zeros((4000,))
  new, _, _ = vqvae.restart_dead_codes(jax.random.key(2), jnp.zeros((4000, 2)), usage, samples,
                                       errors, threshold=1.0)
  picked = np.asarray(new)[:, 0]
  assert set(np.unique(picked)) == {2.0, 3.0}
  np.testing.assert_allclose((picked == 3.0).mean(), 0.75, atol=0.03)


def test_kmeans_init_finds_separated_clusters():
  rng = np.random.RandomState(3)
  centres = rng.normal(size=(6, 3)).astype(np.float32) * 20
  samples = (centres[rng.randint(0, 6, 600)] + rng.normal(size=(600, 3)) * 0.1).astype(np.float32)
  found = np.asarray(vqvae.kmeans_init(jax.random.key(0), jnp.asarray(samples), 6,
                                       lloyd_iterations=2))
  # Each true centre is matched by exactly one code, within the cluster noise.
  d = np.sqrt(((centres[:, None] - found[None]) ** 2).sum(-1))
  assert sorted(d.argmin(1)) == list(range(6))
  assert d.min(1).max() < 0.1


def test_maintain_codebook_initialises_at_the_end_of_warmup_and_restarts_after():
  rng = np.random.RandomState(4)
  k, d = 8, 2
  codebook = jnp.asarray(rng.normal(size=(k, d)), jnp.float32)
  stats = {"usage": jnp.zeros((k,)), "ema_count": jnp.ones((k,)), "ema_sum": codebook}
  samples = jnp.asarray(rng.normal(size=(64, d)) + 5.0, jnp.float32)
  errors = jnp.ones((64,))
  settings = vqvae.CodebookSettings(warmup_steps=3, use_ema=True, dead_code_threshold=0.5)
  step = jax.jit(vqvae.maintain_codebook, static_argnums=6)

  # During warm-up (step 0, 1) nothing changes even though every code looks dead.
  cb, st, m = step(jax.random.key(0), jnp.int32(0), codebook, stats, samples, errors, settings)
  np.testing.assert_array_equal(np.asarray(cb), np.asarray(codebook))
  assert int(m["dead_codes"]) == 0
  # At the last warm-up step the codebook is rebuilt from the encoder outputs.
  cb, st, m = step(jax.random.key(0), jnp.int32(2), codebook, stats, samples, errors, settings)
  assert float(jnp.abs(cb - codebook).min()) > 1.0  # every code moved to the data near +5
  np.testing.assert_allclose(np.asarray(st["usage"]), 1.0 / k)
  np.testing.assert_allclose(np.asarray(st["ema_sum"] / st["ema_count"][:, None]), np.asarray(cb),
                             rtol=1e-5)
  # Afterwards the EMA statistics define the codebook, and dead codes are restarted.
  st = dict(st, usage=st["usage"].at[0].set(0.0))
  cb2, st2, m = step(jax.random.key(1), jnp.int32(3), cb, st, samples, errors, settings)
  assert int(m["dead_codes"]) == 1
  expected = np.asarray(vqvae.codebook_from_ema(st["ema_count"], st["ema_sum"]))
  np.testing.assert_allclose(np.asarray(cb2)[1:], expected[1:], rtol=1e-5)
  assert tuple(np.asarray(cb2)[0]) in {tuple(r) for r in np.asarray(samples)}
  np.testing.assert_allclose(float(st2["usage"][0]), 1.0 / k)


def test_prune_codebook_keeps_decoding_identical_for_used_codes():
  model = vqvae.VQAutoencoder(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
                              vq_embed_dim=3, num_vq_embeddings=12, norm_num_groups=4,
                              mid_block_attention=False)
  variables = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=True))
  params = variables["params"]
  used = np.zeros(12, bool)
  used[[0, 3, 4, 9]] = True
  pruned, old_to_new, new_to_old = vqvae.prune_codebook(params, used)
  np.testing.assert_array_equal(new_to_old, [0, 3, 4, 9])
  np.testing.assert_array_equal(old_to_new[[0, 3, 4, 9]], [0, 1, 2, 3])
  assert (old_to_new[~used] == -1).all()
  assert pruned["quantize"]["embedding"].shape == (4, 3)
  tokens = np.array([[[0, 3], [4, 9]], [[9, 9], [3, 0]]])
  before = model.apply({"params": params}, jnp.asarray(tokens), method="decode_indices")
  small = model.clone(num_vq_embeddings=4)
  after = small.apply({"params": pruned}, jnp.asarray(old_to_new[tokens]), method="decode_indices")
  np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
  # Index lists work like masks; statistics follow the same selection.
  _, _, same = vqvae.prune_codebook(params, np.array([9, 0, 4, 3, 3]))
  np.testing.assert_array_equal(same, new_to_old)
  stats = vqvae.prune_vq_stats(variables["vq_stats"], new_to_old)
  assert stats["quantize"]["usage"].shape == (4,)
  np.testing.assert_allclose(float(stats["quantize"]["usage"].sum()), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="no code"):
    vqvae.prune_codebook(params, np.zeros(12, bool))
