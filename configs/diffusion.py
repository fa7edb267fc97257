r"""Diffusion stage: the text-conditioned denoising transformer over VQ tokens.

Presets (``--config configs/diffusion.py:<preset>``):
  tiny         unit tests and CPU smoke runs (seconds)
  shapes       the quickstart: procedural shapes, 32x32 images -> 8x8 tokens (minutes on a CPU)
  shapes_long  the same layout trained 30,000 steps (``python -m vqd_jax.quickstart --long``)
  tiny_experts, shapes_experts
               tiny / shapes split into 3 eDiff-I expert denoisers by noise level, fine-tuned
               from a trained run: ``--config.init_from=BASE_WORKDIR``
  emoji, cifar10
               a captioned folder (like Noto Emoji) / a folder of class sub-folders (like the
               CIFAR-10 test split), 32x32 -> 8x8 tokens of the autoencoder preset of the same
               name; set ``--config.data.path=FOLDER`` (or token records: ``python -m vqd_jax.encode``)
  S, B, ithq   the VQ-Diffusion sizes of ``vqd_jax.transformer.presets`` for 256x256 images ->
               32x32 tokens. They have no data: set ``--config.data.source`` (tfds, folder,
               class_folder or tokens; training names the fields each needs).

Override any field: ``--config.train.num_steps=2000 --config.model.num_layers=4``. ``model`` holds
``Text2ImageTransformer`` fields (checked against the class; see its docstring for each one); the
run sets the others: ``num_classes`` (the autoencoder's codes), ``height`` and ``width``
(``data.image_size``), ``cross_attention_dim`` (``text.width``) and ``num_embeds_ada_norm``
(``diffusion.num_timesteps``). The measurements behind the choices below are in
docs/experiments.md.
"""

import ml_collections

from vqd_jax.training import nonfinite
from vqd_jax.transformer.presets import PRESETS

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

  # source: shapes | folder | class_folder | tfds | tokens (see vqd_jax/training/data.py).
  c.data = ml_collections.ConfigDict(dict(
      source="shapes", path="", name="", split="train", image_size=32, seed=0,
      num_examples=60_000, two_object_prob=0.5, random_crop=False, random_flip=False,
      caption_template="a photo of a {}", worker_count=0,
      # Classifier-free guidance: this fraction of captions becomes the learned null embedding.
      caption_drop_rate=0.1))

  # encoder: 'word' (a word tokenizer fitted on the captions and an encoder trained with the
  # denoiser; width, num_layers, num_heads) or 'clip' (a frozen CLIP text encoder from clip_path,
  # a local folder). Its width is the cross-attention width.
  c.text = ml_collections.ConfigDict(dict(encoder="word", clip_path="", max_length=16, width=128,
                                          num_layers=2, num_heads=4))

  # Precomputed embedding sources (eDiff-I) conditioned on beside the text encoder. A source with a
  # path (a local transformers folder: vqd_jax.text.load_encoder) is run once by
  # `python -m vqd_jax.encode` into the token records (data.source='tokens'); drop_rate: its
  # independent dropout (eDiff-I's rates); max_length: state positions kept. clip_image embeds the
  # training image itself (at sampling: a reference image, or nothing).
  c.embeddings = ml_collections.ConfigDict(dict(
      t5=dict(path="", drop_rate=0.25, max_length=32),
      clip_text=dict(path="", drop_rate=0.2, max_length=32),
      clip_image=dict(path="", drop_rate=0.9)))

  # dtype: compute dtype ('float32' or 'bfloat16'); weights, optimizer state and EMA stay float32.
  # Only mlp_type='fc', patch_size=1 and no relative position bias export to diffusers.
  c.model = ml_collections.ConfigDict(dict(
      num_layers=4, num_heads=4, head_dim=32, mlp_ratio=4, dropout=0.0, remat=False,
      dtype="float32", position_init="sincos", mlp_type="fc", patch_size=1,
      relative_position_bias=False))

  c.diffusion = ml_collections.ConfigDict(dict(
      num_timesteps=100, schedule="released",
      # Official: 5e-4 with the adaptive (2 - t/T) factor; small models learn faster with more.
      aux_weight=0.5, adaptive_aux=True, mask_weights=[1.0, 1.0],
      # Draw t in proportion to sqrt(E[L_t^2]) once every t has been seen (official).
      importance_sampling=True,
      # The first layout_warmup_steps steps draw t from [layout_warmup_from * T, T): nearly every
      # token is masked, so the step learns where the caption puts each object (0 = off).
      layout_warmup_steps=0, layout_warmup_from=0.9))

  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=200, decay="cosine", end_lr_factor=0.05, b1=0.9, b2=0.96,
      weight_decay=4.5e-2, grad_clip=0.5))

  # restore_step, nonfinite, max_nonfinite_steps: see vqd_jax.training.nonfinite.safety_defaults.
  c.train = ml_collections.ConfigDict(dict(
      num_steps=3000, batch_size=16, log_every=50, ckpt_every=500, sample_every=1000,
      keep_checkpoints=6, ema_decay=0.999, async_checkpoints=True, **nonfinite.safety_defaults()))

  c.sampling = ml_collections.ConfigDict(dict(
      num_steps=50, guidance_scale=2.0, truncation_rate=0.9, purity_weight=None))

  # eDiff-I expert denoisers (num = 0: one denoiser). num experts own contiguous intervals of t:
  # explicit boundaries (num - 1 first timesteps of experts 1..num-1), or when empty, eDiff-I's
  # tree over uniform t (num = 3): the high-noise leaf the top 2^-(high_depth+1) of the steps,
  # the low-noise leaf the bottom 2^-(low_depth+1), one expert between (vqd_jax.diffusion.experts).
  # Fine-tuned from a trained single-denoiser run: init_from (each expert draws t only from its
  # own interval; the batch is split evenly between them).
  c.experts = ml_collections.ConfigDict(dict(num=0, boundaries=[], high_depth=1, low_depth=1))
  # A trained diffusion run directory whose latest weights (and EMA, loss history) start this run.
  c.init_from = ""

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
    # Token patches buy the budget for a local MLP and batch 32 (docs/experiments.md).
    c.model.update(patch_size=2, mlp_type="mix", mlp_ratio=2, relative_position_bias=True)
    # 5,000 steps: the 5,500-step run already scored its best at 5,000 (docs/experiments.md).
    c.train.update(batch_size=32, num_steps=5000)
    # Relations are learned from two-object captions.
    c.data.two_object_prob = 0.85
    # Without the warm-up most runs never learn the direction of a relation.
    c.diffusion.layout_warmup_steps = 1500
    c.sampling.truncation_rate = 0.7
    if preset == "shapes_long":
      # A checkpoint every 2,000 steps, all kept, so the score curve can be read off afterwards.
      c.train.update(num_steps=30_000, sample_every=2000, ckpt_every=2000, keep_checkpoints=15)
      c.data.num_examples = 200_000
  elif preset in ("S", "B", "ithq"):
    sizes = PRESETS[preset]
    c.model.update({k: v for k, v in sizes.items() if k in c.model})
    c.model.update(remat=preset != "S", position_init="normal")
    c.text.update(max_length=77, width=sizes["cross_attention_dim"], num_layers=12, num_heads=8)
    c.diffusion.num_timesteps = sizes["num_embeds_ada_norm"]
    # A dataset of your own: training refuses to start until data.source names one.
    c.data.update(source="", image_size=256, num_examples=1_000_000)
    c.diffusion.aux_weight = 5e-4
    c.optim.update(lr=4.5e-4 if preset != "ithq" else 1e-4,
                   warmup_steps=5000 if preset != "ithq" else 7000)
    c.train.update(num_steps=500_000, batch_size=32 if preset == "S" else 64, log_every=100,
                   ckpt_every=5000, sample_every=10_000, ema_decay=0.99)
    c.sampling.update(num_steps=100, guidance_scale=5.0 if preset == "ithq" else 3.0)
  elif preset in ("emoji", "cifar10"):
    c.model.update(patch_size=2, mlp_type="mix", mlp_ratio=2, relative_position_bias=True)
    c.data.update(source="folder" if preset == "emoji" else "class_folder", path="",
                  random_flip=preset == "cifar10")
    # Emoji captions are Unicode names ("an emoji of large blue circle"): longer than shapes'.
    c.text.max_length = 24 if preset == "emoji" else 8
    c.train.update(batch_size=32, num_steps=5000)
    c.sampling.truncation_rate = 0.8
    c.preview_prompts = (["an emoji of red apple", "an emoji of smiling face with sunglasses"]
                         if preset == "emoji" else ["a photo of a cat", "a photo of a ship"])
  elif preset in ("tiny_experts", "shapes_experts"):
    c = get_config(preset.split("_")[0])
    # Uniform-t tree, depth 1 on each side: t 0..24, 25..74, 75..99. Uniform rather than the
    # base's importance weights so the split is known from the config alone, and a 50-step
    # sampler gives the extremes 12-13 steps each.
    c.experts.update(num=3, high_depth=1, low_depth=1)
    c.diffusion.layout_warmup_steps = 0  # the base learned the layout; the high expert keeps it
    if preset == "shapes_experts":
      # Fine-tuning: a short warm-up and a third of the base's steps, batch split 3 ways.
      c.train.update(num_steps=1500, batch_size=48)
      c.optim.update(lr=3e-4, warmup_steps=50)
    else:
      c.train.batch_size = 6
  else:
    raise ValueError(f"Unknown preset {preset!r}: use tiny, shapes, shapes_long, S, B, ithq, "
                     "emoji, cifar10, tiny_experts or shapes_experts.")
  return c
