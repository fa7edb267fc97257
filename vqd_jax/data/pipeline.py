"""grain pipelines: random-access source -> shuffled, host-sliced, decoded, batched iterator.

  source -> shuffle(seed) -> repeat(num_epochs) -> map(decode, per-index rng)
         -> this host's rows of each global batch -> iterator (skips unusable records) -> batch

Every random choice (order, crop, flip, which caption) is a pure function of ``(seed, index)``, so
the stream does not depend on timing or worker count, and ``iterator.get_state()`` (a small
JSON-able dict such as ``{"next_index": 1234}``; with worker processes a larger dict of the same
kind) restores exactly the same next batches. Augmentation is drawn from the global index (before
the host slice), so the global stream is the same for any number of processes; host ``h`` of ``P``
reads rows ``[h*B/P, (h+1)*B/P)`` of each global batch, so the assembled global batches are too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from vqd_jax.data import decode
from vqd_jax.data import shapes as shapes_lib
from vqd_jax.data import tokens as tokens_lib
from vqd_jax.data.errors import DataSourceError
from vqd_jax.data.tokens import EMBEDDING_SUFFIXES

log = logging.getLogger(__name__)

Tokenize = Callable[[str], tuple[np.ndarray, np.ndarray]]
# Records tried in order when probing that a source yields anything usable at all.
_PROBE_RECORDS = 64


def _example_rng(seed: int, index: int) -> np.random.Generator:
  # A different stream from the shapes generator's default_rng([seed, index]).
  return np.random.default_rng([seed, index, 0x5EED])


def is_token_source(source) -> bool:
  return isinstance(source, tokens_lib.TokenSource)


class _ExampleFn:
  """The per-record map: raw record -> numpy example (or None to skip). Picklable for workers."""

  def __init__(self, *, image_size: int, seed: int, random_crop: bool, random_flip: bool,
               tokenize: Tokenize | None, tokens: bool):
    self.image_size = image_size
    self.seed = seed
    self.random_crop = random_crop
    self.random_flip = random_flip
    self.tokenize = tokenize
    self.tokens = tokens

  def __call__(self, index: int, raw: dict) -> dict | None:
    rng = _example_rng(self.seed, index)
    if self.tokens:
      example = {"tokens": np.asarray(raw["tokens"], np.int32),
                 "caption": decode.pick_caption(raw.get("caption", ""), rng),
                 **{k: v for k, v in raw.items() if k.endswith(EMBEDDING_SUFFIXES)}}
    else:
      example = decode.load_example(raw, self.image_size, rng=rng, random_crop=self.random_crop,
                                    random_flip=self.random_flip)
      if example is None:
        return None
    caption = example.pop("caption")
    if self.tokenize is not None:
      ids, mask = self.tokenize(caption)
      example["text_ids"] = np.asarray(ids, np.int32)
      example["text_mask"] = np.asarray(mask, bool)
    return example


def _check_usable(source, fn: _ExampleFn) -> None:
  """Raises if none of the first records can be used (instead of an endless skipping loop)."""
  if fn.tokens:
    return
  probe = min(len(source), _PROBE_RECORDS)
  for i in range(probe):
    if decode.load_example(source[i], fn.image_size) is not None:
      return
  what = f"all {probe} records" if probe == len(source) else f"the first {probe} records"
  raise DataSourceError(f"No usable example in {source!r}: {what} are unreadable or "
                        f"uncaptioned (skip counts: {decode.skip_counts()}). Check the paths and "
                        "image files.")


def make_pipeline(source, *, batch_size: int, image_size: int, seed: int, shuffle: bool = True,
                  random_crop: bool = False, random_flip: bool = False,
                  tokenize: Tokenize | None = None, process_index: int = 0,
                  process_count: int = 1, num_epochs: int | None = None, worker_count: int = 0,
                  read_threads: int = 2):
  """A resumable grain ``DatasetIterator`` of this host's batches.

  Args:
    source: a random-access source (``ShapesSource``, ``ImageFolderSource``,
      ``ClassFolderSource``, ``TfdsSource`` or ``TokenSource``).
    batch_size: examples per batch on this host (the last partial batch is dropped).
    image_size: side of the square output images (ignored for token sources).
    seed: seeds the order and every augmentation.
    shuffle: shuffle each epoch (a fresh order per epoch).
    random_crop: random square crop after resizing the shorter side to ``image_size * 9/8``.
      Keep it off for shapes: it changes object sizes the captions describe.
    random_flip: horizontal flip with probability 1/2; "left"/"right" in the caption are swapped
      with it, so spatial captions stay true.
    tokenize: ``caption -> (ids [L], mask [L])``; adds ``text_ids`` int32 and ``text_mask`` bool.
    process_index, process_count: this host's slice of the global stream: rows
      ``[process_index * batch_size, (process_index + 1) * batch_size)`` of every global batch of
      ``process_count * batch_size`` examples.
    num_epochs: passes over the source; None repeats forever.
    worker_count: grain worker processes for decoding (0: decode in this process's threads).
    read_threads: threads prefetching decoded examples in this process.

  Returns:
    An iterator of dicts of numpy arrays: ``image`` uint8 ``[B, S, S, 3]`` (or ``tokens`` int32
    ``[B, N]`` for token sources), plus ``text_ids`` int32 ``[B, L]`` and ``text_mask`` bool
    ``[B, L]`` with ``tokenize``. ``get_state()`` returns a JSON-able dict; ``set_state(state)``
    resumes from it exactly.
  """
  import grain  # pylint: disable=import-outside-toplevel
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is outside [0, {process_count}).")
  tokens = is_token_source(source)
  if tokens and (random_crop or random_flip):
    raise ValueError("random_crop/random_flip cannot apply to pre-encoded tokens; turn them off "
                     "(or augment before encoding).")
  if len(source) == 0:
    raise DataSourceError(f"{source!r} is empty.")
  fn = _ExampleFn(image_size=image_size, seed=seed, random_crop=random_crop,
                  random_flip=random_flip, tokenize=tokenize, tokens=tokens)
  _check_usable(source, fn)

  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds.map_with_index(fn)
  if process_count > 1:
    from vqd_jax.data.host_rows import HostRowsMapDataset  # pylint: disable=import-outside-toplevel
    ds = HostRowsMapDataset(ds, batch_size, process_index, process_count)
  # Unusable records are None; the iterator skips them. A window of 1000 all skipped is an error.
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                               prefetch_buffer_size=max(2 * batch_size, 16)))
  it_ds = grain.experimental.WithOptionsIterDataset(
      it_ds, grain.experimental.DatasetOptions(filter_raise_threshold_ratio=1.0))
  if worker_count > 0:
    # Before batching: workers decode interleaved slices of the example stream, which the main
    # process reassembles in order, so batches do not depend on the worker count.
    _parse_absl_flags()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count),
                              worker_init_fn=die_with_parent)
  it_ds = it_ds.batch(batch_size, drop_remainder=True)
  return iter(it_ds)


def _parse_absl_flags() -> None:
  """grain's workers read absl flags; a library caller (a notebook, a script) has not parsed any."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def die_with_parent(worker_index: int = 0, worker_count: int = 0) -> None:
  """Run in each grain worker: it exits when the trainer does, even when the trainer is SIGKILLed
  (preemption, OOM killer), instead of lingering with its memory.

  A daemon thread polls the parent's pid: the kernel's parent-death signal would fire when the
  *thread* that started the worker ends, and grain starts workers from short-lived threads.
  """
  del worker_index, worker_count
  import multiprocessing  # pylint: disable=import-outside-toplevel
  # The pid the worker was started by: the trainer may already be gone by now.
  parent = getattr(multiprocessing.parent_process(), "pid", None) or os.getppid()

  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)  # reparented: the trainer is gone

  threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def image_loader(source, *, image_size: int) -> Callable[[int], dict | None]:
  """``index -> {"image": uint8 [S, S, 3], "caption": str}`` or None (unusable; counted).

  No augmentation and the first caption of multi-caption records: for encoding datasets once.
  """

  def load(index: int) -> dict | None:
    return decode.load_example(source[index], image_size)

  return load


def iter_captions(source) -> Iterator[str]:
  """Captions to fit a tokenizer on.

  Shapes: a small deterministic set covering the whole vocabulary (the source is unbounded). Other
  sources: every caption they hold, empty ones skipped.
  """
  if isinstance(source, shapes_lib.ShapesSource):
    yield from shapes_lib.vocabulary_captions()
    return
  captions: Iterable[str]
  if hasattr(source, "captions"):
    captions = source.captions()
  else:
    captions = (decode.pick_caption(source[i].get("caption", ""), None)
                for i in range(len(source)))
  for caption in captions:
    caption = caption.strip()
    if caption:
      yield caption
