"""The autoencoder training task: steps reduce the loss, warm-up/codebook schedule, GAN, token I/O.

Run as a script it is also the quickstart benchmark: it trains the shapes config for a wall-clock
budget and reports steps/s and per-pixel palette accuracy on held-out images:

  python tests/test_vqvae_task.py --config configs/vqvae.py:shapes --seconds 120

(with the package installed, ``pip install -e .``, or ``PYTHONPATH=.``).
"""

import argparse
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vqd_jax import configs_io
from vqd_jax.training.vqvae_task import VQVAETask

PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0],
                    [255, 0, 255], [0, 255, 255], [255, 255, 255]], np.uint8)


def toy_shapes(n: int, size: int, seed: int) -> np.ndarray:
  """uint8 ``[n, size, size, 3]``: one or two filled squares/discs of palette colours on black."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  images = np.zeros((n, size, size, 3), np.uint8)
  for img in images:
    for _ in range(rng.integers(1, 3)):
      side = int(rng.integers(size // 5, size // 2))
      y0, x0 = rng.integers(0, size - side, 2)
      if rng.random() < 0.5:
        mask = (yy >= y0) & (yy < y0 + side) & (xx >= x0) & (xx < x0 + side)
      else:
        r = side / 2
        mask = (yy - y0 - r + .5) ** 2 + (xx - x0 - r + .5) ** 2 <= r * r
      img[mask] = PALETTE[rng.integers(1, 8)]
  return images


def palette_accuracy(originals: np.ndarray, recon: np.ndarray) -> tuple[float, float]:
  """Fraction of object (non-black) pixels whose nearest palette colour is right, and of black ones."""
  def ids(x):
    return (((x[..., None, :].astype(np.float32) - PALETTE) ** 2).sum(-1)).argmin(-1)

  truth, pred = ids(originals), ids(recon)
  obj = truth > 0
  return float((truth[obj] == pred[obj]).mean()), float((pred[~obj] == 0).mean())


def make_config(**sections) -> ml_collections.ConfigDict:
  """``configs/vqvae.py:tiny`` at 16x16 with an EMA codebook; ``sections`` update its sections."""
  c = configs_io.load_config("configs/vqvae.py:tiny")
  c.data.update(image_size=16, num_examples=1000)
  c.model.update(block_out_channels=(8, 16), layers_per_block=1, down_attention=[False, False],
                 up_attention=None, mid_block_attention=True, latent_channels=8, vq_embed_dim=4,
                 num_vq_embeddings=32, norm_num_groups=4, dtype="float32")
  c.loss.update(recon="l2", commitment_beta=0.25, codebook_ema=True, codebook_ema_decay=0.9,
                usage_decay=0.9, dead_code_threshold=0.03, warmup_steps=3, kmeans_iterations=2,
                gan_weight=0.0, gan_start=0, perceptual_weight=0.0, lpips_weights="")
  c.loss.disc.update(base_channels=8, num_layers=2, norm_num_groups=4, lr=1e-3, b1=0.5, b2=0.9)
  c.optim.update(lr=3e-3, warmup_steps=0, decay="constant", b1=0.9, b2=0.99, weight_decay=0.0,
                 grad_clip=1.0)
  c.train.update(num_steps=100, batch_size=8, ema_decay=0.0)
  for name, values in sections.items():
    c[name].update(values)
  return c


def _init(task, images, seed=0):
  return nn.meta.unbox(jax.jit(task.init_state)(jax.random.key(seed), {"image": images}))


@pytest.fixture(scope="module")
def trained():
  """16 steps (3 of them plain-autoencoder warm-up) on one fixed batch, with per-step records."""
  task = VQVAETask(make_config())
  batch = {"image": jnp.asarray(toy_shapes(8, 16, seed=0))}
  state = _init(task, batch["image"])
  initial = state
  step = jax.jit(task.train_step)
  records = []
  for i in range(16):
    state, metrics = step(state, batch, jax.random.key(i))
    records.append(dict(jax.device_get(metrics),
                        codebook=np.asarray(state.params["quantize"]["embedding"])))
  return task, batch, initial, state, records


def test_train_steps_reduce_reconstruction_loss(trained):
  _, _, initial, state, records = trained
  assert set(initial.extra) == {"vq_stats"} and initial.ema_params is None
  losses = [float(r["recon_loss"]) for r in records]
  assert np.mean(losses[-3:]) < 0.7 * losses[0], losses
  assert int(state.step) == 16


def test_warmup_then_codebook_from_encoder_outputs_then_quantizer(trained):
  task, batch, initial, _, records = trained
  commitments = [float(r["commitment_loss"]) for r in records]
  assert commitments[:3] == [0.0, 0.0, 0.0] and all(c > 0 for c in commitments[3:])
  # During warm-up the EMA codebook is left alone; at its last step it is rebuilt from the latents.
  before = np.asarray(initial.params["quantize"]["embedding"])
  np.testing.assert_array_equal(records[1]["codebook"], before)
  assert np.abs(records[2]["codebook"] - before).min() > 0
  assert float(records[3]["perplexity"]) > 2.0  # several codes in use from the first VQ step


def test_token_round_trip_and_reconstruct(trained):
  task, batch, _, state, _ = trained
  images = batch["image"][:3]
  assert task.num_codes == 32 and task.downsample_factor == 2
  tokens = jax.jit(task.encode_tokens)(state.params, state.extra, images)
  assert tokens.shape == (3, 8, 8) and tokens.dtype == jnp.int32
  decoded = jax.jit(task.decode_tokens)(state.params, state.extra, tokens)
  recon = jax.jit(task.reconstruct)(state.params, state.extra, images)
  assert decoded.dtype == jnp.uint8 and decoded.shape == images.shape
  np.testing.assert_array_equal(np.asarray(decoded), np.asarray(recon))


def test_gan_waits_for_its_start_step_and_param_ema_tracks():
  task = VQVAETask(make_config(
      model=dict(block_out_channels=(8,), down_attention=(False,), mid_block_attention=False),
      loss=dict(gan_weight=0.5, gan_start=2, warmup_steps=1, disc=dict(num_layers=1)),
      train=dict(ema_decay=0.9)))
  images = jnp.asarray(toy_shapes(4, 16, seed=1))
  state = _init(task, images)
  assert set(state.extra) == {"vq_stats", "disc"} and state.ema_params is not None
  step = jax.jit(task.train_step)
  disc0 = state.extra["disc"]["params"]
  weights = []
  for i in range(3):
    state, metrics = step(state, {"image": images}, jax.random.key(i))
    weights.append(float(metrics["gan_weight"]))
    if i == 1:
      same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), disc0, state.extra["disc"]["params"])
      assert all(jax.tree.leaves(same)), "the discriminator must not train before gan_start"
  assert weights[0] == 0.0 and weights[1] == 0.0 and weights[2] > 0
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), disc0, state.extra["disc"]["params"])
  assert any(jax.tree.leaves(moved))
  assert np.isfinite(float(metrics["d_loss"])) and np.isfinite(float(metrics["loss"]))
  # The EMA model always carries the live codebook.
  np.testing.assert_array_equal(np.asarray(state.ema_params["quantize"]["embedding"]),
                                np.asarray(state.params["quantize"]["embedding"]))


def test_config_errors_are_named():
  with pytest.raises(ValueError, match="config.model.channel_mult is not a field of VQAutoencoder"):
    VQVAETask(make_config(model=dict(channel_mult=(1, 2))))
  with pytest.raises(ValueError, match="config.model.codebook_ema cannot be set.*config.loss"):
    VQVAETask(make_config(model=dict(codebook_ema=True)))
  with pytest.raises(ValueError, match="dtype"):
    VQVAETask(make_config(model=dict(dtype="float16")))
  with pytest.raises(ValueError, match="lpips_weights"):
    VQVAETask(make_config(loss=dict(perceptual_weight=1.0)))


# -- quickstart benchmark (python tests/test_vqvae_task.py) ------------------------------------------

def _benchmark(config_path: str, seconds: float, eval_images: int = 512) -> dict:
  from vqd_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  config = configs_io.load_config(config_path)
  task = VQVAETask(config)
  batches = task.make_train_iterator(0, 1)
  state = _init(task, jnp.asarray(next(batches)["image"]))
  step = jax.jit(task.train_step, donate_argnums=0)
  t0 = time.perf_counter()
  state, metrics = step(state, next(batches), jax.random.key(0))
  jax.block_until_ready(metrics)
  compile_s, t0, n = time.perf_counter() - t0, time.perf_counter(), 1
  while n < config.train.num_steps and time.perf_counter() - t0 < seconds:
    state, metrics = step(state, next(batches), jax.random.key(n))
    n += 1
  jax.block_until_ready(state.params)
  wall = time.perf_counter() - t0
  held_out = data_lib.ShapesSource(config.data.image_size, seed=12345, length=eval_images)
  originals = np.stack([held_out[i]["image"] for i in range(eval_images)])
  recon = np.asarray(jax.jit(task.reconstruct)(state.params, None, jnp.asarray(originals)))
  obj, background = palette_accuracy(originals, recon)
  return dict(steps=n, train_seconds=round(wall, 1), compile_seconds=round(compile_s, 1),
              steps_per_sec=round((n - 1) / wall, 2), object_pixel_accuracy=round(obj, 4),
              background_accuracy=round(background, 4),
              last_metrics={k: round(float(v), 4) for k, v in metrics.items()})


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/vqvae.py:shapes")
  parser.add_argument("--seconds", type=float, default=120.0)
  args = parser.parse_args()
  print(json.dumps(_benchmark(args.config, args.seconds), indent=1))
