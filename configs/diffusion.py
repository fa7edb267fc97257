r"""Diffusion stage: the text-conditioned denoising transformer over VQ tokens.

Presets (``--config configs/diffusion.py:<preset>``):
  tiny         unit tests and CPU smoke runs (seconds)
  shapes       the quickstart: procedural shapes, 32x32 images -> 8x8 tokens (2x2 token patches,
               Mix-FFN, relative position bias, layout warm-up), 5,500 steps: 10.8 min for the
               whole quickstart on 2 CPU cores, shapes score 0.67 on 300 prompts (see README)
  shapes_long  the same layout, 30,000 steps: 59 min for the whole quickstart --long on 2 CPU
               cores, shapes score 0.905 on 1,000 prompts (flat from 10,000 steps; see README)
  S, B, ithq   the VQ-Diffusion sizes (18x192, 19x1024, 36x1408) for 256x256 images -> 32x32 tokens

Any field can be overridden: ``--config.train.num_steps=2000 --config.model.num_layers=4``.
The diffusion follows the released code's schedule ('released'); set
``--config.diffusion.schedule=paper`` for the paper's linear mask/replace curves.
"""

import ml_collections

# A few prompts covering every attribute, for preview grids during training.
SHAPES_PREVIEW_PROMPTS = (
    "a large red circle", "a small blue square", "a large green triangle", "a small white circle",
    "a small yellow square to the left of a large magenta circle",
    "a large cyan triangle above a small red square",
    "a small green circle below a large blue triangle",
    "a large white square to the right of a small yellow triangle",
)


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "diffusion"
  c.seed = 0
  # Workdir of the trained autoencoder (its config and weights are read from there).
  c.vqvae_workdir = ""
  c.preview_prompts = list(SHAPES_PREVIEW_PROMPTS)

  c.data = ml_collections.ConfigDict(dict(
      source="shapes", path="", name="", split="train", image_size=32, seed=0,
      num_examples=60_000, two_object_prob=0.5, random_crop=False, random_flip=False,
      caption_template="a photo of a {}", worker_count=0,
      # Classifier-free guidance: this fraction of captions is replaced by the learned null
      # embedding during training.
      caption_drop_rate=0.1))

  # The trainable text encoder (for training from scratch; CLIP plugs in for pretrained models).
  # causal: each token attends only to earlier ones, as in CLIP (no gain measured on shapes).
  c.text = ml_collections.ConfigDict(dict(max_length=16, width=128, num_layers=2, num_heads=4,
                                          causal=False))

  # The shapes denoiser (~1.4M parameters; the quickstart preset changes its layout, see there).
  # Measured on 2 CPU cores: a 256-wide model scores the same as this one after the same number of
  # steps at half the steps/s, so at this budget optimizer steps beat width.
  # dtype: compute dtype of the denoiser and text encoder ('float32' or 'bfloat16'); parameters,
  # optimizer state and EMA stay float32 either way. remat: recompute block activations in the
  # backward pass (memory for FLOPs; on for the big presets). position_init: 'normal' (official)
  # or 'sincos' (row/column embeddings start as a 2-D sin-cos table; still learned). mlp_type: 'fc'
  # (diffusers layout), 'conv' (the official Conv_MLP of VQ-Diffusion-S, 3x3 convolutions over
  # the token grid; with mlp_ratio=2 it is the official S layout) or 'mix' (fc, 3x3 depthwise
  # conv, fc: SegFormer's Mix-FFN, the conv MLP's locality at about the fc MLP's cost). patch_size:
  # tokens per position along each side (1 = official; p > 1 runs the blocks over p x p blocks of
  # tokens, about p^2 times cheaper per image, see vqd_jax/transformer/patches.py).
  # relative_position_bias: a learned 2-D relative position bias in every self-attention (see
  # vqd_jax/transformer/relative_position.py). pooled_text_adaln: the mean text state joins every
  # AdaLN's timestep embedding (DiT/Imagen style; no gain measured on shapes). Only 'fc', p = 1,
  # no relative bias and no pooled-text AdaLN export to diffusers.
  c.model = ml_collections.ConfigDict(dict(
      num_layers=4, num_heads=4, head_dim=32, mlp_ratio=4, dropout=0.0, remat=False,
      dtype="float32", position_init="sincos", mlp_type="fc", patch_size=1,
      relative_position_bias=False, pooled_text_adaln=False))

  c.diffusion = ml_collections.ConfigDict(dict(
      num_timesteps=100, schedule="released",
      # Official: 5e-4 with the adaptive (2 - t/T) factor. A larger weight on the direct x0 loss
      # trains small models much faster; the large presets use the official value.
      aux_weight=0.5, adaptive_aux=True, mask_weights=[1.0, 1.0],
      # Draw t in proportion to sqrt(E[L_t^2]) once every t has been seen (official); False keeps
      # t uniform.
      importance_sampling=True,
      # Layout warm-up: the first layout_warmup_steps steps draw t uniformly from
      # [layout_warmup_from·T, T), where (nearly) every token is masked and the only thing to learn
      # is where the caption puts each object (0 = off, the official objective throughout).
      layout_warmup_steps=0, layout_warmup_from=0.9))

  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=200, decay="cosine", end_lr_factor=0.05, b1=0.9, b2=0.96,
      weight_decay=4.5e-2, grad_clip=0.5))

  c.train = ml_collections.ConfigDict(dict(
      num_steps=3000, batch_size=16, log_every=50, ckpt_every=500, sample_every=1000,
      keep_checkpoints=6, ema_decay=0.999, async_checkpoints=True))

  c.sampling = ml_collections.ConfigDict(dict(
      num_steps=50, guidance_scale=2.0, truncation_rate=0.9, purity_weight=None))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical axis -> mesh axis table; None uses vqd_jax.sharding.DEFAULT_RULES.
  c.sharding_rules = None
  return c


def get_config(preset: str = "shapes") -> ml_collections.ConfigDict:
  c = _base()
  if preset == "tiny":
    c.data.num_examples = 256
    c.text.update(width=32, num_layers=1, num_heads=2)
    c.model.update(num_layers=1, num_heads=2, head_dim=16)
    c.train.update(num_steps=4, batch_size=8, log_every=2, ckpt_every=2, sample_every=0,
                   async_checkpoints=False)
    c.optim.update(warmup_steps=0, decay="constant")
    c.sampling.num_steps = 4
    c.preview_prompts = ["a large red circle", "a small blue square"]
  elif preset in ("shapes", "shapes_long"):
    # Measured on 2 CPU cores, 15-minute budget (README): 2x2 token patches make an image about
    # 4x cheaper, which pays for a local MLP and for batch 32 (0.24 -> 0.42 on 100 prompts). The
    # relative position bias teaches the relation's direction, and captions with two objects are
    # where relations are learned, so they make up 85% of the training captions (0.38 -> 0.50 on
    # 300 prompts in one run, 0.39 in another; README). Mix-FFN: the conv MLP's locality, 1.25x
    # the speed.
    # The layout warm-up (the first steps at t >= 0.9 T) is what makes the relation's direction
    # learned at all in most runs: with 750 steps, seeds 1 and 2 scored 0.61 and 0.52 (relations
    # 0.94, 0.70) against 0.32 and 0.39 without (README).
    c.model.update(patch_size=2, mlp_type="mix", mlp_ratio=2, relative_position_bias=True)
    # 5,500 steps: training on one threaded CPU device (8.8 instead of 7.5 steps/s on 2 cores)
    # bought 1,000 more steps than the 4,500 that took 693 s on two devices.
    c.train.update(batch_size=32, num_steps=5500)
    c.data.two_object_prob = 0.85
    # 1,500 warm-up steps rather than 750: seed 2 found the direction late with 750 (relations
    # 0.70, score 0.52) and early with 1,500 (0.95, 0.62); seed 1 scored 0.65 against 0.61.
    c.diffusion.layout_warmup_steps = 1500
    # Truncation 0.7 rather than 0.9: on the same 500 prompts the 30,000-step --long checkpoint
    # scored 0.920 against 0.884, a 6-layer 6,000-step one 0.804 against 0.774 (README).
    c.sampling.truncation_rate = 0.7
    if preset == "shapes_long":
      # The quickstart's layout for 30,000 steps (measured: 0.897, 0.903, 0.897 at 10,000,
      # 20,000, 30,000 steps, so the length is a margin, not a need). A checkpoint every 2,000
      # steps, all kept: the score curve can be read off afterwards.
      c.train.update(num_steps=30_000, sample_every=2000, ckpt_every=2000, keep_checkpoints=15)
      c.data.num_examples = 200_000
  elif preset in ("S", "B", "ithq"):
    sizes = {"S": dict(num_layers=18, num_heads=16, head_dim=12),
             "B": dict(num_layers=19, num_heads=16, head_dim=64),
             "ithq": dict(num_layers=36, num_heads=16, head_dim=88)}[preset]
    c.model.update(sizes)
    c.model.update(remat=preset != "S", position_init="normal")
    c.data.update(image_size=256, num_examples=1_000_000)
    c.text.update(max_length=77, width=512, num_layers=12, num_heads=8)
    c.diffusion.aux_weight = 5e-4
    c.optim.update(lr=4.5e-4 if preset != "ithq" else 1e-4,
                   warmup_steps=5000 if preset != "ithq" else 7000)
    c.train.update(num_steps=500_000, batch_size=32 if preset == "S" else 64, log_every=100,
                   ckpt_every=5000, sample_every=10_000, ema_decay=0.99)
    c.sampling.update(num_steps=100, guidance_scale=5.0 if preset == "ithq" else 3.0)
  else:
    raise ValueError(f"Unknown preset {preset!r}: use tiny, shapes, shapes_long, S, B or ithq.")
  return c
