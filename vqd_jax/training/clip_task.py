"""The contrastive stage: a CLIP/SigLIP dual encoder
(:class:`vqd_jax.text.dual_encoder.DualEncoder`) trained on captioned images by the one loop
(checkpoints, resume, EMA, metrics, progress bar).

Text is tokenised by a :class:`~vqd_jax.text.WordTokenizer` fitted on the training captions at the
first start and saved in the workdir (a resumed run reads it back). Images are normalised on the
device exactly as :func:`~vqd_jax.text.clip_preprocess` does for square images of the training size
(rescale by 1/255, OpenAI CLIP mean/std), so the exported image tower sees the same pixels.

Every ``train.sample_every`` steps and at the end, the held-out pairs (``config.eval``) are scored:
image->text and text->image top-1 retrieval and the chance level are printed and logged as
``eval/*`` scalars, and the towers are written as transformers folders ``WORKDIR/clip_text`` and
``WORKDIR/clip_image`` (:func:`export_towers`).

Config: ``configs/clip.py`` (its docstring lists the fields).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vqd_jax import build
from vqd_jax.data import configured as data_config
from vqd_jax.text import contrastive
from vqd_jax.text.clip import CLIPTextConfig
from vqd_jax.text.clip_preprocess import CLIPImageProcessing, processing_to_dict
from vqd_jax.text.clip_vision import CLIPVisionConfig
from vqd_jax.text.dual_encoder import DualEncoder
from vqd_jax.text.tokenizer import WordTokenizer
from vqd_jax.training import optim as optim_lib
from vqd_jax.training import state as state_lib

TEXT_DIR, IMAGE_DIR = "clip_text", "clip_image"
_SAME_DATA_FIELDS = ("source", "path", "name", "split", "seed")


def load_or_fit_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> WordTokenizer:
  """The run's word tokenizer: read from the workdir, else fitted on the captions and saved."""
  path = os.path.join(workdir, build.WORD_TOKENIZER_FILE)
  if os.path.exists(path):
    return WordTokenizer.load(path)
  from vqd_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  captions = data_lib.iter_captions(data_config.make_source(config.data))
  tokenizer = WordTokenizer.fit(captions, max_length=int(config.text.max_length) or None)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tokenizer.save(path + ".tmp")
    os.replace(path + ".tmp", path)  # other hosts never see a half-written file
  return tokenizer


def check_held_out(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError when ``eval.data`` names the training examples or asks for too few."""
  if all(config.eval.data[k] == config.data[k] for k in _SAME_DATA_FIELDS):
    raise ValueError("config.eval.data names the training data, so retrieval would not be held "
                     "out: set --config.eval.data.seed (shapes) or --config.eval.data.path / "
                     ".split to other examples.")
  if int(config.eval.num_examples) < 2:
    raise ValueError(f"config.eval.num_examples={config.eval.num_examples}: retrieval needs 2+.")


def held_out_examples(config: ml_collections.ConfigDict) -> tuple[np.ndarray, list[str]]:
  """``eval.num_examples`` usable records of ``eval.data``: uint8 ``[N, S, S, 3]`` and their
  captions (images at the training ``data.image_size``). Shapes: the first N of its seed's draws;
  a folder: N at evenly spaced indices (a class folder is stored class by class, and its first
  records would all share one caption), unusable ones left out."""
  from vqd_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from vqd_jax.evaluation import heldout  # pylint: disable=import-outside-toplevel
  check_held_out(config)
  cfg = ml_collections.ConfigDict(config.eval.data.to_dict())
  cfg.image_size = config.data.image_size
  source = data_config.make_source(cfg)
  load = data_lib.image_loader(source, image_size=cfg.image_size)
  num = min(config.eval.num_examples, len(source))
  order = (range(len(source)) if cfg.source == "shapes"
           else heldout.spread_indices(len(source), num))
  images, captions = [], []
  for index in order:
    example = load(index)
    if example is not None:
      images.append(example["image"])
      captions.append(example["caption"])
    if len(images) == config.eval.num_examples:
      break
  if len(images) < 2:
    raise ValueError(f"config.eval.data yields {len(images)} usable examples; retrieval needs 2+.")
  return np.stack(images), captions


class CLIPTask:
  """Implements :class:`vqd_jax.training.state.Task` for the dual encoder (module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str = ""):
    if config.data.source == "tokens":
      raise ValueError("The clip stage trains on images: set --config.data.source to shapes, "
                       "folder, class_folder or tfds, not tokens.")
    if config.loss not in contrastive.LOSSES:
      raise ValueError(f"config.loss must be one of {contrastive.LOSSES}, got {config.loss!r}.")
    check_held_out(config)
    self.config = config
    self.workdir = workdir
    self.tokenizer = load_or_fit_tokenizer(config, workdir)
    self.text_config = CLIPTextConfig(vocab_size=self.tokenizer.vocab_size,
                                      max_position_embeddings=self.tokenizer.max_length,
                                      **{k: v for k, v in config.text.items() if k != "max_length"})
    side = int(config.data.image_size)
    self.vision_config = CLIPVisionConfig(image_size=side, **config.vision.to_dict(),
                                          projection_dim=int(config.contrastive.projection_dim))
    self.processing = CLIPImageProcessing(shortest_edge=side, crop_hw=(side, side))
    cc = config.contrastive
    self.model = DualEncoder(self.text_config, self.vision_config, eos_id=self.tokenizer.eos_id,
                             loss=config.loss, init_logit_scale=cc.init_logit_scale,
                             init_logit_bias=cc.init_logit_bias,
                             dtype=build.compute_dtype(cc.dtype))
    self.tx = optim_lib.make_optimizer(config.optim, config.train.num_steps)
    self._held_out = None
    self._embed = jax.jit(self.embed)

  # -- data ---------------------------------------------------------------------------------------

  def tokenize_one(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = self.tokenizer([caption])
    return ids[0], mask[0]

  def make_train_iterator(self, process_index: int, process_count: int):
    return data_config.make_iterator(self.config.data, self.config.train.batch_size,
                                    self.config.seed, process_index, process_count,
                                    tokenize=self.tokenize_one)

  def pixels(self, images: jax.Array) -> jax.Array:
    """uint8 ``[B, S, S, 3]`` -> CLIP-normalised float32 (as ``clip_preprocess`` at size S)."""
    p = self.processing
    x = images.astype(jnp.float32) * p.rescale_factor
    return (x - jnp.asarray(p.image_mean, jnp.float32)) / jnp.asarray(p.image_std, jnp.float32)

  # -- state and training -------------------------------------------------------------------------

  def init_state(self, key: jax.Array, batch: dict[str, Any]) -> state_lib.TrainState:
    # One threefry draw seeding an 'rbg' key: XLA's CPU backend compiles threefry slowly.
    seed = jax.random.randint(key, (), 0, jnp.iinfo(jnp.int32).max)
    params = self.model.init(jax.random.key(seed, impl="rbg"), self.pixels(batch["image"]),
                             batch["text_ids"], batch["text_mask"])["params"]
    ema = params if self.config.train.ema_decay > 0 else None
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=self.tx.init(params), ema_params=ema)

  def loss_fn(self, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The contrastive loss of one batch and its metrics."""
    ids = batch["text_ids"]
    out = self.model.apply({"params": params}, self.pixels(batch["image"]), ids,
                           batch["text_mask"])
    scale = jnp.minimum(out["logit_scale"], self.config.contrastive.max_logit_scale)
    logits = contrastive.contrastive_logits(out["image_embeds"], out["text_embeds"], scale,
                                            out.get("logit_bias"))
    pos = contrastive.same_rows(ids)
    loss = contrastive.contrastive_loss(self.config.loss, logits,
                                        pos if self.config.contrastive.caption_positives else None)
    hits = jnp.take_along_axis(pos, jnp.argmax(logits, 1)[:, None], 1)[:, 0]
    metrics = {"loss": loss, "temperature": jnp.exp(-scale),
               "train_image_to_text": hits.astype(jnp.float32).mean()}
    if "logit_bias" in out:
      metrics["logit_bias"] = out["logit_bias"]
    return loss, metrics

  def train_step(self, state: state_lib.TrainState, batch: dict[str, Any], key: jax.Array
                 ) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    del key  # deterministic: no dropout, no augmentation on the device
    grads, metrics = jax.grad(self.loss_fn, has_aux=True)(state.params, batch)
    metrics = {**metrics, "grad_norm": optax.global_norm(grads)}
    return state_lib.apply_gradients(state, grads, self.tx, self.config.train.ema_decay), metrics

  # -- evaluation and export ----------------------------------------------------------------------

  def embed(self, params, images: jax.Array, ids: jax.Array, mask: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
    """``(image_embeds [N, E], text_embeds [N, E])`` for uint8 images and token ids."""
    out = self.model.apply({"params": params}, self.pixels(images), ids, mask)
    return out["image_embeds"].astype(jnp.float32), out["text_embeds"].astype(jnp.float32)

  def held_out(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(images, ids, mask, groups)`` of the held-out pairs (loaded once); equal token rows
    share a group, so retrieving any identically captioned item counts as correct."""
    if self._held_out is None:
      images, captions = held_out_examples(self.config)
      ids, mask = self.tokenizer(captions)
      _, groups = np.unique(ids, axis=0, return_inverse=True)
      self._held_out = images, ids, mask, groups.reshape(-1)
    return self._held_out

  def evaluate(self, params) -> dict[str, float]:
    """Held-out ``image_to_text``, ``text_to_image`` top-1 accuracy and ``chance``."""
    images, ids, mask, groups = self.held_out()
    image_embeds, text_embeds = self._embed(params, jnp.asarray(images), jnp.asarray(ids),
                                            jnp.asarray(mask))
    out = contrastive.retrieval_accuracy(np.asarray(image_embeds), np.asarray(text_embeds), groups)
    return {**out, "pairs": float(len(groups))}

  def write_previews(self, state, step: int, writer, directory: str) -> None:
    """The stage's evaluation: held-out retrieval (printed and logged) and the exported towers."""
    del directory
    params = state.ema_params if state.ema_params is not None else state.params
    scores = self.evaluate(params)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in scores.items()})
    print(f"[clip] step {step}: held-out retrieval over {int(scores['pairs'])} pairs: "
          f"image->text {scores['image_to_text']:.3f}, text->image {scores['text_to_image']:.3f} "
          f"(chance {scores['chance']:.3f})", flush=True)
    export_towers(self, params, self.workdir)


def export_towers(task: CLIPTask, params, workdir: str) -> tuple[str, str]:
  """Writes ``workdir/clip_text`` (``CLIPTextModelWithProjection`` + ``word_tokenizer.json``) and
  ``workdir/clip_image`` (``CLIPVisionModelWithProjection`` + ``preprocessor_config.json``);
  returns the two folders."""
  from vqd_jax.interop import clip_export, clip_vision  # pylint: disable=import-outside-toplevel
  params = jax.device_get(params)
  tok = task.tokenizer
  text_dir = clip_export.save_clip_text_encoder(
      os.path.join(workdir, TEXT_DIR), task.text_config, params["text_model"],
      params["text_projection"]["kernel"], tok, bos_id=tok.bos_id, eos_id=tok.eos_id,
      pad_id=tok.pad_id)
  image_dir = clip_vision.save_clip_vision_encoder(
      os.path.join(workdir, IMAGE_DIR), task.vision_config, params["vision"],
      processing_to_dict(task.processing))
  return text_dir, image_dir


def trained_params(workdir: str, step: int | None = None) -> tuple[CLIPTask, Any]:
  """``(task, params)`` of a clip run's checkpoint (the latest by default; EMA when kept)."""
  from vqd_jax.inference import loading  # pylint: disable=import-outside-toplevel
  ckpt, step, config = loading.open_run(
      workdir, "clip", step,
      f"python -m vqd_jax.train --config configs/clip.py --workdir {workdir}")
  task = CLIPTask(config, workdir)
  side, length = int(config.data.image_size), task.tokenizer.max_length
  example = {"image": jnp.zeros((1, side, side, 3), jnp.uint8),
             "text_ids": jnp.zeros((1, length), jnp.int32),
             "text_mask": jnp.ones((1, length), bool)}
  boxed = jax.eval_shape(task.init_state, jax.random.key(0), example).params
  return task, loading.restore_params(ckpt, step, config, boxed, use_ema=True)


def export_run(workdir: str, step: int | None = None) -> tuple[str, str]:
  """Re-exports a clip run's towers from its checkpoint (see :func:`export_towers`)."""
  task, params = trained_params(workdir, step)
  return export_towers(task, params, workdir)
