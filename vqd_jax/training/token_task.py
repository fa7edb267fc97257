"""What every text-conditioned token model's stage shares: frozen autoencoder, conditioner, data.

A token stage (the diffusion denoiser, the autoregressive model, CTF's two stages) trains a network
over the frozen VQ autoencoder's codes with the run's ``Conditioner`` (``vqd_jax.build``): a word
tokenizer fitted on the training captions at the first start, or a pretrained CLIP text encoder
(``config.text.encoder="clip"``, frozen: its weights are copied into the checkpoints and never
updated). Either way its description is saved in the workdir, so sampling later uses exactly the
same vocabulary. Parameters are ``{"transformer", "text_encoder", "null_embedding"}``; a subclass
builds the network (``build_model``), initialises it (``init_model``), gives its loss
(``step_loss``) and draws preview tokens (``preview_tokens``).
"""

from __future__ import annotations

import abc
import functools
import json
import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vqd_jax import build, ctf
from vqd_jax import images as images_lib
from vqd_jax import text as text_lib
from vqd_jax.inference import run_autoencoder as run_vq
from vqd_jax.inference.loading import load_autoencoder_with_config
from vqd_jax.data import configured as data_config
from vqd_jax.training import coarse_table as coarse_lib
from vqd_jax.training import optim as optim_lib
from vqd_jax.training import state as state_lib


def _write_once(path: str, write) -> None:
  """``write(tmp)`` then rename: other hosts checking for ``path`` never see it half-written."""
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write(path + ".tmp")
    os.replace(path + ".tmp", path)


def save_embedding_layout(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes ``embeddings.json``: the layout of the sources the config enables, as the token
  records hold them (once; a resumed run keeps it)."""
  configured = build.configured_embeddings(config)
  path = os.path.join(workdir, build.EMBEDDINGS_FILE)
  if not configured or os.path.exists(path):
    return
  if config.data.source != "tokens":
    raise ValueError(f"config.embeddings enables {sorted(configured)}, which are precomputed: "
                     "train on token records (--config.data.source=tokens) written by "
                     "`python -m vqd_jax.encode` with the same config.")
  from vqd_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  layout = {s["name"]: s for s in data_lib.TokenSource(config.data.path).embeddings}
  missing = sorted(set(configured) - set(layout))
  if missing:
    raise ValueError(f"config.embeddings names {missing}, but the token records in "
                     f"{config.data.path} hold {sorted(layout) or 'no embeddings'}; re-run "
                     "`python -m vqd_jax.encode` with this config.")
  sources = [{**layout[name], "drop_rate": float(section.drop_rate),
              "path": os.path.abspath(section.path)} for name, section in configured.items()]
  for s in sources:  # checks the layout and the rate
    text_lib.EmbeddingSource(**{k: v for k, v in s.items() if k != "path"})

  def write(tmp):
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump({"sources": sources}, f, indent=2)
  _write_once(path, write)


def save_text_assets(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Saves what the run's conditioner needs in ``workdir`` (once; a resumed run keeps them)."""
  save_embedding_layout(config, workdir)
  if config.text.encoder == "clip":
    if not os.path.exists(os.path.join(workdir, build.CLIP_TEXT_DIR, "config.json")):
      if not config.text.clip_path:
        raise ValueError("config.text.encoder='clip' needs config.text.clip_path: a local CLIP "
                         "text checkpoint folder (transformers layout, or a diffusers pipeline "
                         "root with text_encoder/ and tokenizer/).")
      build.save_clip_description(config.text.clip_path, workdir)
    return
  path = os.path.join(workdir, build.WORD_TOKENIZER_FILE)
  if not os.path.exists(path):
    from vqd_jax import data as data_lib  # pylint: disable=import-outside-toplevel
    captions = data_lib.iter_captions(data_config.make_source(config.data))
    tokenizer = text_lib.WordTokenizer.fit(captions, max_length=config.text.max_length)
    _write_once(path, tokenizer.save)


def autoencoder_of_run(config: ml_collections.ConfigDict, workdir: str):
  """The run's own copy of its autoencoder; at the first start it is read from
  ``config.vqvae_workdir`` and copied into the run, which then travels without it."""
  if run_vq.has_copy(workdir):
    return run_vq.load_copy(workdir)
  vq, vq_config = load_autoencoder_with_config(config.vqvae_workdir)
  if jax.process_index() == 0:
    run_vq.save_copy(vq, vq_config, workdir)
  return vq


def check_token_records(config: ml_collections.ConfigDict, vq) -> None:
  """Raises ValueError when ``config.data`` names token records written by another autoencoder
  than ``vq`` (the run's own): their codes would mean other image patches."""
  if config.data.source != "tokens":
    return
  from vqd_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  written_by = data_lib.TokenSource(config.data.path).autoencoder
  if not written_by:
    logging.warning("%s does not say which autoencoder wrote its tokens (written before "
                    "`encode` recorded it), so it cannot be checked against this run's.",
                    config.data.path)
  elif written_by != vq.fingerprint:
    raise ValueError(
        f"The token records in {config.data.path} were written by another autoencoder "
        f"(fingerprint {written_by}) than this run's (fingerprint {vq.fingerprint}). Point "
        "--config.data.path at records encoded by this run's autoencoder, or re-encode with "
        "`python -m vqd_jax.encode --vqvae-workdir` that autoencoder's run.")


class TokenModelTask(abc.ABC):
  """Implements most of :class:`vqd_jax.training.state.Task` for a token model (module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    save_text_assets(config, workdir)
    self.vq = autoencoder_of_run(config, workdir)
    check_token_records(config, self.vq)
    self.conditioner = build.conditioner(config, workdir)
    self.grid = self.vq.token_grid(config.data.image_size)
    self.coarse = None  # CTF: the code -> cluster table (config.ctf.num_clusters > 0)
    if config.get("ctf") is not None and config.ctf.num_clusters:
      self.coarse = coarse_lib.run_coarse_table(config, workdir, self.vq)
    self.model = self.build_model()
    tx = optim_lib.make_optimizer(config.optim, config.train.num_steps)
    if not self.conditioner.trainable:  # a pretrained encoder stays as it was loaded
      tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()},
                                 self.conditioner.trainable_labels)
    self.tx = tx
    self._preview_program = None  # jitted, built by the first preview

  # -- what a token model defines -----------------------------------------------------------------

  @abc.abstractmethod
  def build_model(self) -> Any:
    """The network (``self.vq``, ``self.conditioner`` and ``self.grid`` are set)."""

  @abc.abstractmethod
  def init_model(self, key: jax.Array, states: jax.Array, mask: jax.Array) -> Any:
    """Fresh (boxed) network params for text ``states [B, L, D]`` and ``mask [B, L]``."""

  @abc.abstractmethod
  def step_loss(self, params, batch, key, extra, step) -> tuple[jax.Array, tuple[dict, Any]]:
    """``(loss, (metrics, aux))`` of one batch; ``aux`` goes to :meth:`update_extra`."""

  def preview_tokens(self, params, cond: text_lib.Conditioning, null: text_lib.Conditioning,
                     key: jax.Array) -> jax.Array:
    """Codes ``[B, N]`` for the preview grid, with ``config.sampling`` (inside ``jax.jit``).
    A stage that cannot draw images alone overrides :meth:`write_previews` instead."""
    raise TypeError(f"{type(self).__name__} draws no preview tokens on its own.")

  def initial_extra(self) -> dict[str, Any]:
    """Saved state besides the parameters (e.g. the diffusion loss history)."""
    return {}

  def update_extra(self, extra: dict[str, Any], aux: Any) -> dict[str, Any]:
    del aux
    return extra

  # -- what it predicts ---------------------------------------------------------------------------

  @property
  def predicts_coarse(self) -> bool:
    """Whether the model's classes are CTF's coarse labels (its first stage)."""
    return self.coarse is not None

  @property
  def num_classes(self) -> int:
    """Classes predicted at every position: the codes, or the coarse labels."""
    return self.coarse.num_clusters if self.predicts_coarse else self.vq.num_codes

  def targets(self, batch: dict[str, jax.Array]) -> jax.Array:
    """``[B, N]`` int32 what the model learns: the codes, or their coarse labels."""
    tokens = self._tokens(batch)
    if self.predicts_coarse:
      return ctf.coarse_labels(jnp.asarray(self.coarse.labels), tokens)
    return tokens

  def preview_codes(self, tokens: np.ndarray) -> np.ndarray:
    """Codes to decode for a preview of ``tokens`` (a coarse label shows as its most typical
    code)."""
    return self._typical_codes[tokens] if self.predicts_coarse else tokens

  @functools.cached_property
  def _typical_codes(self) -> np.ndarray:
    """``[C]``: each coarse label's most typical code (computed once, at the first preview)."""
    return coarse_lib.representative_codes(self.vq.codebook, self.coarse.labels,
                                           self.coarse.num_clusters)

  # -- data ---------------------------------------------------------------------------------------

  def tokenize_one(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = self.conditioner.tokenize([caption])
    return ids[0], mask[0]

  def make_train_iterator(self, process_index: int, process_count: int):
    return data_config.make_iterator(self.config.data, self.config.train.batch_size,
                                    self.config.seed, process_index, process_count,
                                    tokenize=self.tokenize_one)

  def _tokens(self, batch: dict[str, jax.Array]) -> jax.Array:
    """``[B, N]`` int32 codes: pre-encoded, or encoded here by the frozen VQ encoder."""
    if "tokens" in batch:
      return batch["tokens"].reshape(batch["tokens"].shape[0], -1).astype(jnp.int32)
    codes = self.vq.encode(batch["image"])
    return codes.reshape(codes.shape[0], -1)

  def conditioning(self, params, batch, key) -> text_lib.Conditioning:
    """The batch's text conditioning, captions dropped to the null embedding at the set rate."""
    embedded = {k: batch[k] for s in self.conditioner.embeddings for k in s.batch_keys()
                if k in batch}
    cond = self.conditioner.encode(params, batch["text_ids"], batch["text_mask"], embedded)
    rows = batch["text_ids"].shape[0]
    return self.conditioner.drop(key, cond, self.conditioner.null(params, rows),
                                 self.config.data.caption_drop_rate)

  # -- state --------------------------------------------------------------------------------------

  def _pretrained_text_params(self) -> Any:
    if self.conditioner.source != "clip":
      return None
    from vqd_jax.interop.clip import load_clip_text_encoder  # pylint: disable=import-outside-toplevel
    return load_clip_text_encoder(self.config.text.clip_path)[1]

  def init_state(self, key: jax.Array, batch: dict[str, jax.Array]) -> state_lib.TrainState:
    return self.state_from_params(self.init_params(key, batch))

  def state_from_params(self, params: Any, ema: Any = None, extra: Any = None
                        ) -> state_lib.TrainState:
    """A step-0 state around ``params`` (EMA from ``ema`` or ``params``; fresh optimizer)."""
    if self.config.train.ema_decay <= 0:
      ema = None
    elif ema is None:
      ema = params
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=self.tx.init(params), ema_params=ema,
                                extra=self.initial_extra() if extra is None else extra)

  def init_params(self, key: jax.Array, batch: dict[str, jax.Array]) -> Any:
    """Fresh (boxed) ``{"transformer", "text_encoder", "null_embedding"}``."""
    # XLA's CPU backend compiles every threefry draw slowly; one draw seeding an 'rbg' key makes
    # parameter init compile several times faster and stays deterministic.
    seed = jax.random.randint(key, (), 0, jnp.iinfo(jnp.int32).max)
    k_tr, k_te, k_null = jax.random.split(jax.random.key(seed, impl="rbg"), 3)
    ids, mask = batch["text_ids"], batch["text_mask"]
    params = self.conditioner.init(k_te, k_null, ids, mask, self._pretrained_text_params())
    states = jnp.zeros((ids.shape[0], self.conditioner.context_length, self.conditioner.width),
                       jnp.float32)
    params["transformer"] = self.init_model(k_tr, states, jnp.ones(states.shape[:2], bool))
    return params

  # -- training -----------------------------------------------------------------------------------

  def train_step(self, state: state_lib.TrainState, batch, key):
    grads, (metrics, aux) = jax.grad(self.step_loss, has_aux=True)(state.params, batch, key,
                                                                   state.extra, state.step)
    metrics = {**metrics, "grad_norm": optax.global_norm(grads)}
    return state_lib.apply_gradients(state, grads, self.tx, self.config.train.ema_decay,
                                     extra=self.update_extra(state.extra, aux)), metrics

  # -- previews -----------------------------------------------------------------------------------

  def generate(self, params, prompts: Sequence[str], key: jax.Array) -> np.ndarray:
    """uint8 images ``[B, H, W, 3]`` for ``prompts`` (through :meth:`preview_tokens`)."""
    if self._preview_program is None:
      def program(params, ids, mask, embedded, key):
        cond = self.conditioner.encode(params, ids, mask, embedded)
        null = self.conditioner.null(params, ids.shape[0])
        return self.preview_tokens(params, cond, null, key)

      self._preview_program = jax.jit(program)
    ids, mask = self.conditioner.tokenize(list(prompts))
    embedded = text_lib.frozen.embed_inputs(self._frozen_encoders, self.conditioner.embeddings,
                                            prompts=list(prompts))
    tokens = self._preview_program(self.place(params), jnp.asarray(ids), jnp.asarray(mask),
                                   embedded, key)
    # Through the host: the frozen autoencoder lives on one device, the tokens may span several.
    return np.asarray(self.vq.decode(self.preview_codes(np.asarray(tokens))))

  @functools.cached_property
  def _frozen_encoders(self) -> dict[str, Any]:
    """The embedding sources' text encoders, for preview prompts (loaded at the first preview)."""
    paths = {n: p for n, p in build.embedding_paths(self.workdir).items() if n != "clip_image"}
    return text_lib.frozen.load_source_encoders(paths)

  def place(self, params: Any) -> Any:
    """``params`` where the preview program runs them (as they are, unless a subclass lays them
    out over the host's devices)."""
    return params

  def write_previews(self, state, step: int, writer, directory: str) -> None:
    """A grid of samples for ``config.preview_prompts`` (process 0 writes it)."""
    prompts = list(self.config.preview_prompts)
    params = state.ema_params if state.ema_params is not None else state.params
    images = self.generate(params, prompts, jax.random.key(0))
    grid = images_lib.image_grid(images)
    if jax.process_index() == 0:
      images_lib.save_png(os.path.join(directory, f"samples_{step:07d}.png"), grid, upscale=4)
      writer.write_image(step, "samples", grid)
      with open(os.path.join(directory, "prompts.json"), "w", encoding="utf-8") as f:
        json.dump(prompts, f)
