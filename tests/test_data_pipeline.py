"""grain pipelines: batches, exact resumption, host slicing, epochs, skipping and augmentation."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from vqd_jax import data
from vqd_jax.benchmarks import chaos
from vqd_jax.evaluation import shapes as shapes_eval
import test_data_helpers as helpers

VOCAB = data.SHAPES_VOCABULARY
MAX_LEN = 12


def tokenize(caption):
  """Word ids (1-based, 0 = padding) and mask: a tiny invertible tokenizer for the tests."""
  words = caption.split()
  ids = np.zeros(MAX_LEN, np.int32)
  ids[:len(words)] = [VOCAB.index(w) + 1 for w in words]
  return ids, ids > 0


def detokenize(ids):
  return " ".join(VOCAB[i - 1] for i in ids if i > 0)


def batches(it, n):
  return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_batches_have_the_documented_layout():
  src = data.ShapesSource(resolution=32, seed=0, length=100)
  batch = next(data.make_pipeline(src, batch_size=4, image_size=32, seed=0, tokenize=tokenize))
  assert set(batch) == {"image", "text_ids", "text_mask"}
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["text_ids"].shape == (4, MAX_LEN) and batch["text_ids"].dtype == np.int32
  assert batch["text_mask"].dtype == bool
  # The ids are the tokenized captions of exactly those images.
  captions = [detokenize(ids) for ids in batch["text_ids"]]
  assert all(shapes_eval.score(img, cap).correct for img, cap in zip(batch["image"], captions))
  plain = next(data.make_pipeline(src, batch_size=4, image_size=32, seed=0))
  assert set(plain) == {"image"}


def test_state_round_trips_through_json_and_resumes_exactly():
  src = data.ShapesSource(resolution=32, seed=0, length=50)
  make = lambda: data.make_pipeline(src, batch_size=4, image_size=32, seed=7, tokenize=tokenize)
  it = make()
  batches(it, 3)
  state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
  expected = batches(it, 15)  # crosses an epoch boundary (50 examples)
  fresh = make()
  fresh.set_state(state)
  assert_same_batches(batches(fresh, 15), expected)
  it.set_state(state)  # rewinding the same iterator works too
  assert_same_batches(batches(it, 15), expected)


def test_host_slices_partition_the_global_stream():
  src = data.ShapesSource(resolution=32, seed=1, length=64)
  kw = dict(batch_size=1, image_size=32, seed=3, random_flip=True, tokenize=tokenize)
  global_stream = batches(data.make_pipeline(src, **kw), 12)
  for index in range(3):
    host = batches(data.make_pipeline(src, process_index=index, process_count=3, **kw), 4)
    assert_same_batches(host, global_stream[index::3])


def test_one_epoch_is_a_permutation_and_epochs_reshuffle():
  n = 10
  src = data.ShapesSource(resolution=32, seed=2, length=n)
  truth = sorted(src[i]["image"].tobytes() for i in range(n))
  two = list(data.make_pipeline(src, batch_size=1, image_size=32, seed=5, num_epochs=2))
  assert len(two) == 2 * n
  first, second = ([b["image"][0].tobytes() for b in part] for part in (two[:n], two[n:]))
  assert sorted(first) == truth and sorted(second) == truth
  assert first != second  # a new order each epoch
  unshuffled = data.make_pipeline(src, batch_size=n, image_size=32, seed=5, shuffle=False,
                                  num_epochs=1)
  np.testing.assert_array_equal(next(unshuffled)["image"], [src[i]["image"] for i in range(n)])


def test_unreadable_records_are_skipped_and_counted(tmp_path):
  helpers.make_captioned_folder(tmp_path)
  src = data.ImageFolderSource(str(tmp_path))  # 5 entries, one corrupt
  data.reset_skip_counts()
  out = list(data.make_pipeline(src, batch_size=1, image_size=8, seed=0, num_epochs=1))
  assert len(out) == 4
  assert data.skip_counts() == {"undecodable_image": 1}
  colours = sorted(tuple(b["image"][0, 4, 4]) for b in out)
  assert colours == [(0, 255, 0), (0, 255, 0), (255, 0, 0), (255, 255, 255)]


def test_nothing_readable_is_a_clear_error(tmp_path):
  (tmp_path / "a.jpg").write_bytes(b"garbage")
  (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "a.jpg", "caption": "x"}))
  with pytest.raises(ValueError, match="No usable example.*all 1 records"):
    data.make_pipeline(data.ImageFolderSource(str(tmp_path)), batch_size=1, image_size=8, seed=0)


def test_random_flip_keeps_spatial_captions_true():
  src = data.ShapesSource(resolution=32, seed=4, length=64, two_object_prob=1.0)
  batch = next(data.make_pipeline(src, batch_size=64, image_size=32, seed=0, shuffle=False,
                                  random_flip=True, tokenize=tokenize))
  flipped = 0
  for i, (img, ids) in enumerate(zip(batch["image"], batch["text_ids"])):
    caption = detokenize(ids)
    assert shapes_eval.score(img, caption).correct, caption
    flipped += not np.array_equal(img, src[i]["image"])
  assert 16 < flipped < 48  # about half


def test_random_crop_varies_per_example(tmp_path):
  gradient = np.zeros((24, 24, 3), np.uint8)
  gradient[..., 0] = np.arange(24)[None, :] * 10  # red grows to the right
  gradient[..., 1] = np.arange(24)[:, None] * 10  # green grows downwards
  Image.fromarray(gradient).save(tmp_path / "g.png")
  lines = [json.dumps({"file": "g.png", "caption": f"copy {i}"}) for i in range(8)]
  (tmp_path / "captions.jsonl").write_text("\n".join(lines))
  src = data.ImageFolderSource(str(tmp_path))
  kw = dict(batch_size=8, image_size=16, seed=0, shuffle=False)
  plain = next(data.make_pipeline(src, **kw))["image"]
  crops = next(data.make_pipeline(src, random_crop=True, **kw))["image"]
  assert crops.shape == plain.shape == (8, 16, 16, 3)
  assert len({p.tobytes() for p in plain}) == 1  # no augmentation: identical
  assert len({c.tobytes() for c in crops}) > 1  # a crop position per example
  # Crops come from an 18x18 resize (9/8 of 16): offsets of at most 2 px, so the red ramp at the
  # top-left corner stays within two resized columns of the centre crop's.
  assert np.abs(crops[:, 0, 0, 0].astype(int) - int(plain[0, 0, 0, 0])).max() <= 2 * 240 / 17


def test_token_source_batches(tmp_path):
  records = [{"tokens": np.full(6, i, np.int32), "caption": "a large red circle"} for i in range(9)]
  data.write_token_records(str(tmp_path), records)
  src = data.TokenSource(str(tmp_path))
  it = data.make_pipeline(src, batch_size=3, image_size=32, seed=0, shuffle=False, num_epochs=1,
                          tokenize=tokenize)
  out = list(it)
  assert len(out) == 3 and set(out[0]) == {"tokens", "text_ids", "text_mask"}
  np.testing.assert_array_equal(np.concatenate([b["tokens"][:, 0] for b in out]), np.arange(9))
  assert detokenize(out[0]["text_ids"][0]) == "a large red circle"
  with pytest.raises(ValueError, match="pre-encoded tokens"):
    data.make_pipeline(src, batch_size=3, image_size=32, seed=0, random_flip=True)


def test_worker_processes_give_the_same_batches():
  src = data.ShapesSource(resolution=32, seed=0, length=40)
  expected = batches(data.make_pipeline(src, batch_size=4, image_size=32, seed=1), 4)
  it = data.make_pipeline(src, batch_size=4, image_size=32, seed=1, worker_count=1)
  try:
    got = batches(it, 2)
    state = json.loads(json.dumps(it.get_state()))
    got += batches(it, 2)
    assert_same_batches(got, expected)
    it.set_state(state)
    assert_same_batches(batches(it, 2), expected[2:])
  finally:
    it.close()


_PIPELINE_PARENT = """
import time
from vqd_jax import data
it = data.make_pipeline(data.ShapesSource(resolution=32, seed=0, length=40), batch_size=4,
                        image_size=32, seed=1, worker_count=2)
next(it)
print("ready", flush=True)
time.sleep(300)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from "
                    "Linux's /proc")
def test_worker_processes_end_when_the_trainer_is_killed():
  # A preempted or OOM-killed trainer gets SIGKILL: no cleanup runs, so the decode workers must
  # notice their parent's death themselves instead of holding their memory forever.
  proc = subprocess.Popen([sys.executable, "-c", _PIPELINE_PARENT], stdout=subprocess.PIPE,
                          text=True)
  try:
    assert proc.stdout.readline().strip() == "ready"
    workers = chaos.descendants(proc.pid)
    assert len(workers) >= 2
  finally:
    proc.kill()
    proc.wait()
  deadline = time.monotonic() + 20
  while time.monotonic() < deadline and any(map(chaos.running, workers)):
    time.sleep(0.2)
  alive = [p for p in workers if chaos.running(p)]
  for p in alive:
    os.kill(p, signal.SIGKILL)
  assert not alive, f"worker processes {alive} outlived their SIGKILLed parent"


def test_a_worker_whose_trainer_died_before_it_started_exits(monkeypatch):
  # Killed while the worker was still starting: by the time it runs its init, its parent pid is
  # already init's (or a subreaper's), and waiting for that one to change would wait forever.
  import multiprocessing  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  from vqd_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  exited = threading.Event()
  monkeypatch.setattr(multiprocessing, "parent_process",
                      lambda: types.SimpleNamespace(pid=os.getppid() + 1))  # the dead trainer
  monkeypatch.setattr(os, "_exit", lambda code: exited.set())
  pipeline.die_with_parent()
  assert exited.wait(5)
