r"""Autoencoder stage: the VQ autoencoder that turns images into a grid of codebook tokens.

Presets (``--config configs/vqvae.py:<preset>``):
  tiny         unit tests and CPU smoke runs (seconds)
  shapes       the quickstart: 32x32 shapes -> 8x8 tokens (minutes on a CPU)
  shapes_long  the same, trained longer
  ithq         the architecture of the ITHQ VQModel (256x256 -> 32x32 tokens, 4096 codes, EMA codebook)
  f8           the taming f8 VQGAN architecture of the COCO/CUB models (8192 codes), with GAN
  emoji        a captioned folder of real images (like Noto Emoji: captions.jsonl + images),
               32x32 -> 8x8 tokens, 512 codes; set ``--config.data.path=FOLDER``
  cifar10      a folder of class sub-folders (like the CIFAR-10 test split; captions "a photo of a
               {class}"), the same network; set ``--config.data.path=FOLDER``
               (ithq and f8 have no data: set ``--config.data.source``, see configs/diffusion.py)

Override any field: ``--config.train.num_steps=2000 --config.model.num_vq_embeddings=1024``.
``model`` holds ``vqd_jax.vqvae.VQAutoencoder`` fields (checked against the class; names follow
diffusers' VQModel config) plus the compute ``dtype``.
"""

import ml_collections

from vqd_jax.training import nonfinite


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "vqvae"
  c.seed = 0
  # source: shapes | folder | class_folder | tfds (see vqd_jax/training/data.py).
  c.data = ml_collections.ConfigDict(dict(
      source="shapes", path="", name="", split="train", image_size=32, seed=0,
      num_examples=1_000_000, two_object_prob=0.5, random_crop=False, random_flip=False,
      caption_template="a photo of a {}", worker_count=0))
  # The quickstart autoencoder: 4x4 pixel patches encoded one by one (local_encoder), so the
  # background is always one code and the denoiser has fewer codes to learn (docs/experiments.md).
  c.model = ml_collections.ConfigDict(dict(
      block_out_channels=(32,), layers_per_block=1, patch_size=4, local_encoder=True,
      down_attention=[False], up_attention=[False],
      mid_block_attention=False, latent_channels=32, vq_embed_dim=32, num_vq_embeddings=128,
      norm_num_groups=16, dtype="float32"))
  c.loss = ml_collections.ConfigDict(dict(
      recon="l2", commitment_beta=0.25,
      # Plain-autoencoder warm-up, then k-means codebook initialisation from encoder outputs:
      # a VQ trained from a random codebook washes out colours and drops small objects.
      warmup_steps=300, kmeans_iterations=3,
      codebook_ema=False, codebook_ema_decay=0.99, usage_decay=0.99, dead_code_threshold=0.03,
      gan_weight=0.0, gan_start=0, perceptual_weight=0.0, lpips_weights=""))
  c.loss.disc = ml_collections.ConfigDict(dict(base_channels=64, num_layers=3, norm_num_groups=32,
                                               lr=1e-4, b1=0.5, b2=0.9))
  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-3, warmup_steps=50, decay="cosine", end_lr_factor=0.05, b1=0.9, b2=0.99,
      weight_decay=0.0, grad_clip=1.0))
  # restore_step, nonfinite, max_nonfinite_steps: see vqd_jax.training.nonfinite.safety_defaults.
  c.train = ml_collections.ConfigDict(dict(
      num_steps=1200, batch_size=32, log_every=50, ckpt_every=600, sample_every=600,
      keep_checkpoints=2, ema_decay=0.0, async_checkpoints=True, **nonfinite.safety_defaults()))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = None
  return c


def get_config(preset: str = "shapes") -> ml_collections.ConfigDict:
  c = _base()
  if preset == "tiny":
    c.model.update(block_out_channels=(8, 16), down_attention=[False, False],
                   up_attention=[False, False], num_vq_embeddings=32, latent_channels=8,
                   vq_embed_dim=8, norm_num_groups=4, patch_size=1, local_encoder=False)
    c.loss.warmup_steps = 2
    c.train.update(num_steps=4, batch_size=4, log_every=2, ckpt_every=2, sample_every=0,
                   async_checkpoints=False)
    c.optim.update(warmup_steps=0, decay="constant")
  elif preset == "shapes":
    pass
  elif preset == "shapes_long":
    c.train.num_steps = 4000
    c.loss.warmup_steps = 500
  elif preset in ("ithq", "f8"):
    # ithq: the ITHQ VQModel (EMA codebook); f8: the taming f8 VQGAN of the COCO/CUB models.
    widths, embed_dim, codes = {"ithq": ((64, 128, 256, 512), 128, 4096),
                                "f8": ((128, 128, 256, 512), 256, 8192)}[preset]
    # A dataset of your own: training refuses to start until data.source names one.
    c.data.update(source="", image_size=256)
    c.model.update(block_out_channels=widths, layers_per_block=2, patch_size=1, local_encoder=False,
                   down_attention=[False, False, False, True],
                   up_attention=[True, False, False, False], mid_block_attention=True,
                   latent_channels=256, vq_embed_dim=embed_dim, num_vq_embeddings=codes,
                   norm_num_groups=32)
    c.loss.update(codebook_ema=preset == "ithq", recon="l1", gan_weight=0.8, gan_start=30_000,
                  warmup_steps=0, dead_code_threshold=0.03)
    c.optim.update(lr=4.5e-6 * 64, warmup_steps=1000, b1=0.5, b2=0.9, grad_clip=0.0)
    c.train.update(num_steps=400_000, batch_size=64, log_every=100, ckpt_every=5000,
                   sample_every=5000)
  elif preset in ("emoji", "cifar10"):
    _real_images(c, preset)
  else:
    raise ValueError(f"Unknown preset {preset!r}: use tiny, shapes, shapes_long, ithq, f8, emoji "
                     "or cifar10.")
  return c


def _real_images(c: ml_collections.ConfigDict, preset: str) -> None:
  """Real 32x32 images: a convolutional encoder (the shapes one codes flat 4x4 patches one by
  one) and more codes for textures; sized to train in about 15 minutes on 2 CPU cores."""
  c.data.update(source="folder" if preset == "emoji" else "class_folder", path="",
                random_flip=preset == "cifar10")
  c.model.update(block_out_channels=(32, 64, 64), layers_per_block=1, patch_size=1,
                 local_encoder=False, down_attention=[False] * 3, up_attention=[False] * 3,
                 latent_channels=64, vq_embed_dim=64, num_vq_embeddings=512, norm_num_groups=16)
  c.train.update(num_steps=1500, batch_size=32, log_every=100, ckpt_every=500, sample_every=500)
