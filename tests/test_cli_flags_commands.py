"""The flags of ``python -m vqd_jax.sample``, ``encode``, ``convert``, ``quickstart`` and
``train``, each checked by what it changes: the images written, what reaches the sampler (the
pipeline's ``generate`` is watched: its prompts, key, settings and parameters), the token records,
the exported weights and the trained runs.

Parameters are compared with the checkpoint's own arrays (read by orbax, without our loaders),
tokens with the autoencoder's encoding of the source images, and keys with ``fold_in(key(seed),
first job of the batch)``, the documented way ``--seed`` is used.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from cli_coverage import covers
from vqd_jax import diffusion, sample

PROMPTS = ["a large red circle", "a small blue square"]


def _records(folder) -> list[dict]:
  with open(os.path.join(folder, "samples.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _png(folder, name) -> np.ndarray:
  return np.asarray(Image.open(os.path.join(folder, name)).convert("RGB"))


def _saved_state(workdir, step):
  """The checkpoint of ``step`` as orbax wrote it (raw and EMA parameters)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  return ocp.PyTreeCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state"))


@pytest.fixture
def generate_calls(monkeypatch):
  """Every call of ``VQDiffusionPipeline.generate`` with its pipeline, arguments and images, so
  that the flags' values can be checked where the sampler receives them."""
  from vqd_jax.inference import VQDiffusionPipeline  # pylint: disable=import-outside-toplevel
  original = VQDiffusionPipeline.generate
  calls: list[dict] = []

  def watched(self, params, prompts, key, settings, **kwargs):
    images = original(self, params, prompts, key, settings, **kwargs)
    calls.append(dict(pipe=self, params=params, prompts=list(prompts), key=key,
                      settings=settings, kwargs=kwargs, images=np.asarray(images)))
    return images

  monkeypatch.setattr(VQDiffusionPipeline, "generate", watched)
  return calls


def _key_data(seed: int, start: int) -> np.ndarray:
  return np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), start)))


@covers("sample --workdir", "sample --prompts-file", "sample --num-samples", "sample --out",
        "sample --batch-size", "sample --steps", "sample --guidance", "sample --truncation",
        "sample --purity", "sample --seed")
def test_prompts_file_batches_settings_and_seed(tiny_run, tmp_path, generate_calls):
  """The file's non-blank lines, stripped, are the prompts; ``--num-samples 2`` of each is four
  images in ``--out``; ``--batch-size 3`` samples them in two calls of exactly 3 rows (the last
  padded with its last job, so one compiled program serves both) and writes only the 4 real
  rows. The sampler receives exactly the flags' settings and ``fold_in(key(7), first job)``: that
  key gives the written images again, another seed other images."""
  prompts_file = tmp_path / "prompts.txt"
  prompts_file.write_text(f"{PROMPTS[0]}\n\n  {PROMPTS[1]}  \n", encoding="utf-8")
  out = str(tmp_path / "out")
  assert sample.main(["--workdir", tiny_run, "--prompts-file", str(prompts_file),
                      "--num-samples", "2", "--batch-size", "3", "--steps", "2", "--guidance",
                      "3", "--truncation", "0.8", "--purity", "0.5", "--seed", "7",
                      "--out", out]) == 0
  records = _records(out)
  assert [(r["prompt"], r["sample_index"]) for r in records] == [
      (PROMPTS[0], 0), (PROMPTS[0], 1), (PROMPTS[1], 0), (PROMPTS[1], 1)]
  assert sorted(f for f in os.listdir(out) if f.endswith(".png")) == [
      "00000.png", "00001.png", "00002.png", "00003.png", "grid.png"]
  calls = generate_calls
  assert [c["prompts"] for c in calls] == [[PROMPTS[0], PROMPTS[0], PROMPTS[1]], [PROMPTS[1]] * 3]
  written = np.stack([_png(out, r["file"]) for r in records])
  np.testing.assert_array_equal(written[:3], calls[0]["images"])
  np.testing.assert_array_equal(written[3], calls[1]["images"][0])  # the padded rows dropped
  # --workdir: the latest checkpoint of that run (trained 4 steps).
  assert {r["checkpoint_step"] for r in records} == {4} and calls[0]["pipe"].checkpoint_step == 4

  want = diffusion.SamplerConfig(num_steps=2, guidance_scale=3.0, truncation_rate=0.8,
                                 purity_weight=0.5)
  assert all(c["settings"] == want for c in calls)
  assert {(r["seed"], r["num_steps"], r["guidance_scale"], r["truncation_rate"],
           r["purity_weight"]) for r in records} == {(7, 2, 3.0, 0.8, 0.5)}
  for call, start in zip(calls, (0, 3)):
    np.testing.assert_array_equal(jax.random.key_data(call["key"]), _key_data(7, start))
  pipe, args = calls[0]["pipe"], (calls[0]["params"], calls[0]["prompts"])
  again = pipe.generate(*args, jax.random.fold_in(jax.random.key(7), 0), want)
  np.testing.assert_array_equal(again, written[:3])
  other = pipe.generate(*args, jax.random.fold_in(jax.random.key(8), 0), want)
  assert not np.array_equal(other, again)


@covers("sample --step", "sample --no-ema")
def test_step_and_no_ema_load_that_checkpoints_raw_parameters(tiny_run, tmp_path,
                                                              generate_calls):
  """``--step 2 --no-ema`` samples with the raw parameters saved at step 2 (not step 4's, not
  the EMA), and with the run's own sampling settings (configs/diffusion.py:tiny) as defaults."""
  out = str(tmp_path / "out")
  assert sample.main(["--workdir", tiny_run, "--prompt", PROMPTS[0], "--num-samples", "1",
                      "--step", "2", "--no-ema", "--out", out]) == 0
  (call,) = generate_calls
  saved, latest = _saved_state(tiny_run, 2), _saved_state(tiny_run, 4)
  used = np.asarray(call["params"]["null_embedding"])
  np.testing.assert_array_equal(used, np.asarray(saved["params"]["null_embedding"]))
  assert np.abs(used - np.asarray(saved["ema_params"]["null_embedding"])).max() > 1e-6
  assert np.abs(used - np.asarray(latest["params"]["null_embedding"])).max() > 1e-6
  for a, b in zip(jax.tree.leaves(call["params"]["transformer"]),
                  jax.tree.leaves(saved["params"]["transformer"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  (record,) = _records(out)
  assert record["checkpoint_step"] == 2 and call["pipe"].checkpoint_step == 2
  assert call["settings"] == diffusion.SamplerConfig(num_steps=4, guidance_scale=2.0,
                                                     truncation_rate=0.9)


@covers("sample --prompt", "sample --init-image", "sample --start-t")
def test_init_image_is_noised_to_start_t_and_resampled(tiny_run, tmp_path, generate_calls):
  """``--init-image`` without a mask is edited: the file's pixels are the sampler's init image,
  which starts from noise (not [MASK]) at ``--start-t 3``, for the ``--prompt`` given."""
  init = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
  Image.fromarray(init).save(tmp_path / "init.png")
  out = str(tmp_path / "out")
  assert sample.main(["--workdir", tiny_run, "--prompt", PROMPTS[1], "--num-samples", "1",
                      "--init-image", str(tmp_path / "init.png"), "--start-t", "3",
                      "--out", out]) == 0
  (call,) = generate_calls
  assert call["prompts"] == [PROMPTS[1]]
  np.testing.assert_array_equal(np.asarray(call["kwargs"]["init_image"]), init)
  assert call["kwargs"]["inpaint_mask"] is None
  assert (call["settings"].start_t, call["settings"].start_from) == (3, "noise")
  (record,) = _records(out)
  assert (record["prompt"], record["start_t"]) == (PROMPTS[1], 3)
  np.testing.assert_array_equal(_png(out, record["file"]), call["images"][0])


# -- python -m vqd_jax.encode ------------------------------------------------------------------


@covers("encode --vqvae-workdir", "encode --config", "encode --out", "encode --num-examples",
        "encode --batch-size", "encode --coarse-clusters", "encode --coarse-balanced",
        "encode --coarse-seed")
def test_encode_writes_the_autoencoders_codes_and_the_coarse_table(tiny_vq_dir, tmp_path,
                                                                   monkeypatch):
  """The records hold the first ``--num-examples`` images of ``--config``'s data, encoded by the
  ``--vqvae-workdir`` autoencoder (recomputed here from the shapes source), in encoder calls of
  ``--batch-size`` rows; the table is the balanced k-means of the codebook with
  ``--coarse-seed``."""
  from vqd_jax import ctf, encode  # pylint: disable=import-outside-toplevel
  from vqd_jax.data import TokenSource  # pylint: disable=import-outside-toplevel
  from vqd_jax.data.shapes import ShapesSource  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference import FrozenAutoencoder  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference import load_autoencoder  # pylint: disable=import-outside-toplevel
  rows = []
  original = FrozenAutoencoder.encode
  monkeypatch.setattr(FrozenAutoencoder, "encode",
                      lambda self, images: rows.append(len(images)) or original(self, images))
  out = str(tmp_path / "tokens")
  assert encode.main(["--vqvae-workdir", tiny_vq_dir, "--config", "configs/diffusion.py:tiny",
                      "--out", out, "--num-examples", "5", "--batch-size", "4",
                      "--coarse-clusters", "4", "--coarse-balanced", "--coarse-seed", "3"]) == 0
  assert rows == [4, 4]  # 5 examples: a full call, then 1 padded to 4
  monkeypatch.undo()
  records = TokenSource(out)
  vq = load_autoencoder(tiny_vq_dir)
  assert len(records) == 5 and records.autoencoder == vq.fingerprint
  shapes = ShapesSource(resolution=32, seed=0, two_object_prob=0.5)  # configs/diffusion.py:tiny
  examples = [shapes[i] for i in range(5)]
  assert [records[i]["caption"] for i in range(5)] == [e["caption"] for e in examples]
  codes = np.asarray(vq.encode(np.stack([e["image"] for e in examples]))).reshape(5, -1)
  np.testing.assert_array_equal(np.stack([records[i]["tokens"] for i in range(5)]), codes)
  table = ctf.load_coarse_table(out)
  assert (table.num_clusters, table.balanced, table.seed) == (4, True, 3)
  np.testing.assert_array_equal(
      table.labels, ctf.kmeans(vq.codebook, 4, seed=3, balanced=True).labels)
  assert np.bincount(table.labels, minlength=4).tolist() == [vq.num_codes // 4] * 4


# -- python -m vqd_jax.convert -----------------------------------------------------------------


@covers("convert export --step")
def test_convert_export_step_writes_that_checkpoint(tiny_run, tmp_path, capsys):
  """``--step 2`` exports the EMA weights saved at step 2 (read by orbax), not the latest's."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  from vqd_jax import convert  # pylint: disable=import-outside-toplevel
  out = tmp_path / "step2"
  assert convert.main(["export", "--workdir", tiny_run, "--out", str(out), "--step", "2"]) == 0
  assert f"Exported step 2 of {tiny_run}" in capsys.readouterr().out
  exported = load_file(str(out / "learned_classifier_free_sampling_embeddings" /
                           "diffusion_pytorch_model.safetensors"))["embeddings"]
  saved, latest = _saved_state(tiny_run, 2), _saved_state(tiny_run, 4)
  np.testing.assert_array_equal(exported, np.asarray(saved["ema_params"]["null_embedding"]))
  assert np.abs(exported - np.asarray(latest["ema_params"]["null_embedding"])).max() > 0


@covers("convert inception src", "convert inception dst")
def test_convert_inception_copies_every_tensor_of_src_to_dst(tmp_path, capsys):
  """A .safetensors ``src`` in pytorch-fid's layout (random values) is written to ``dst`` (its
  folder created) with every tensor unchanged."""
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  from vqd_jax import convert  # pylint: disable=import-outside-toplevel
  from vqd_jax.interop import inception  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  state = {k: rng.standard_normal(s, dtype=np.float32)
           for k, s in inception.expected_state_dict_shapes().items()}
  src, dst = tmp_path / "fid.safetensors", tmp_path / "new" / "fid_inception.safetensors"
  save_file(state, str(src))
  assert convert.main(["inception", str(src), str(dst)]) == 0
  assert f"Wrote {dst}" in capsys.readouterr().out
  written = load_file(str(dst))
  assert set(written) >= set(state)
  for key, value in state.items():
    np.testing.assert_array_equal(written[key], value)


# -- python -m vqd_jax.quickstart --------------------------------------------------------------

# The quickstart's stages shrunk to seconds: 2 steps each, 8 encoded examples, 2 sampling steps.
QUICK = ["--vqvae.train.num_steps=2", "--vqvae.train.batch_size=4",
         "--vqvae.train.sample_every=0", "--vqvae.train.async_checkpoints=False",
         "--vqvae.loss.warmup_steps=1", "--diffusion.train.num_steps=2",
         "--diffusion.train.batch_size=4", "--diffusion.train.sample_every=0",
         "--diffusion.train.async_checkpoints=False", "--diffusion.data.num_examples=8",
         "--diffusion.model.num_layers=1", "--diffusion.text.num_layers=1",
         "--diffusion.sampling.num_steps=2", "--diffusion.diffusion.layout_warmup_steps=0"]


def _files(folder) -> dict[str, int]:
  """``{relative path: mtime in ns}`` of every file under ``folder`` but TensorBoard's (a
  resumed run opens a new, empty event file)."""
  return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, names in os.walk(folder) for f in names
          if not os.path.relpath(d, folder).startswith("tensorboard")}


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory):
  """A quickstart workdir after one complete (shrunk) run with 2 prompts."""
  from vqd_jax import quickstart  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("quickstart") / "qs")
  assert quickstart.main(["--workdir", workdir, "--num-prompts", "2"] + QUICK) == 0
  return workdir


@covers("quickstart --workdir", "quickstart --num-prompts")
def test_quickstart_again_skips_the_finished_stages(quickstart_dir, caplog):
  """A second call resumes each finished run of ``--workdir`` at its last step and trains
  nothing: the checkpoints, metrics and token records are the same files, untouched. It samples
  and scores ``--num-prompts 2`` images again, under that workdir."""
  from vqd_jax import quickstart  # pylint: disable=import-outside-toplevel
  kept = {stage: _files(os.path.join(quickstart_dir, stage))
          for stage in ("vqvae", "diffusion", "tokens")}
  assert {"checkpoints/2/state/_METADATA", "metrics.jsonl"} <= set(kept["vqvae"])
  assert "DONE" in kept["tokens"]
  with caplog.at_level("INFO", logger="vqd_jax.training.loop"):
    assert quickstart.main(["--workdir", quickstart_dir, "--num-prompts", "2"] + QUICK) == 0
  for stage, files in kept.items():
    assert _files(os.path.join(quickstart_dir, stage)) == files, stage
  messages = [r.getMessage() for r in caplog.records]
  for stage in ("vqvae", "diffusion"):
    assert any(m.startswith(f"Resumed {stage} from step 2 ") for m in messages), messages
  assert not any(m.startswith("Initialised") for m in messages)
  assert sorted(os.listdir(quickstart_dir)) == ["diffusion", "quickstart.json", "samples",
                                                "tokens", "vqvae"]
  with open(os.path.join(quickstart_dir, "quickstart.json"), encoding="utf-8") as f:
    report = json.load(f)
  assert (report["preset"], report["model"]) == ("shapes", "vqd")
  assert report["score"]["num_samples"] == 2
  assert sorted(os.listdir(os.path.join(quickstart_dir, "samples"))) == [
      "00000.png", "00001.png", "grid.png", "samples.jsonl", "shapes_score.json"]


class _Stop(Exception):
  """Raised in place of training, once the configuration handed to the trainer is seen."""


@covers("quickstart --model", "quickstart --long")
def test_quickstart_model_and_long_choose_what_is_trained(quickstart_dir, tmp_path,
                                                          monkeypatch):
  """``--model ar`` trains configs/ar.py's model on the shared tokens into WORKDIR/ar (its
  autoencoder and tokens reused); ``--long`` trains the shapes_long autoencoder (4,000 steps,
  warm-up 500; the shapes preset has 1,200 and 300). The trainer is stopped at the first call
  that would train anything new."""
  from vqd_jax import quickstart  # pylint: disable=import-outside-toplevel
  from vqd_jax.training import loop  # pylint: disable=import-outside-toplevel
  seen = []

  def train(config, workdir, **kwargs):
    seen.append((config, workdir))
    if config.stage == "vqvae" and os.path.isdir(os.path.join(workdir, "checkpoints")):
      return {}  # finished in quickstart_dir
    raise _Stop

  monkeypatch.setattr(loop, "train_and_evaluate", train)
  with pytest.raises(_Stop):
    quickstart.main(["--workdir", quickstart_dir, "--model", "ar", "--num-prompts", "2"])
  (vq, _), (ar, ar_dir) = seen
  assert ar.stage == "ar" and ar_dir == os.path.join(quickstart_dir, "ar")
  assert (ar.data.source, ar.data.path) == ("tokens", os.path.join(quickstart_dir, "tokens"))
  assert ar.vqvae_workdir == os.path.join(quickstart_dir, "vqvae") and vq.stage == "vqvae"
  seen.clear()
  with pytest.raises(_Stop):
    quickstart.main(["--workdir", str(tmp_path / "long"), "--long"])
  ((vq, vq_dir),) = seen
  assert vq_dir == str(tmp_path / "long" / "vqvae")
  assert (vq.train.num_steps, vq.loss.warmup_steps) == (4000, 500)


# -- python -m vqd_jax.train -------------------------------------------------------------------


@covers("train --config", "train --workdir", "train --stop_after")
def test_train_stops_after_the_given_step_as_if_preempted(tmp_path):
  """``--config configs/vqvae.py:tiny`` (4 steps, a checkpoint every 2) trains a vqvae run in
  ``--workdir``; ``--stop_after 2`` ends it at step 2, checkpointed, as a preemption would. The
  flags are parsed as the command parses them, and restored afterwards."""
  import grain  # pylint: disable=import-outside-toplevel,unused-import
  from absl import flags  # pylint: disable=import-outside-toplevel
  from absl.testing import flagsaver  # pylint: disable=import-outside-toplevel
  from vqd_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from vqd_jax import train  # pylint: disable=import-outside-toplevel
  from vqd_jax.data import pipeline  # pylint: disable=import-outside-toplevel,unused-import
  # Flags first defined inside flagsaver would be dropped on exit: grain's are defined above.
  workdir, defined = str(tmp_path / "run"), set(flags.FLAGS)
  with flagsaver.flagsaver():
    train.main(train.parse_flags(["python -m vqd_jax.train", "--config", "configs/vqvae.py:tiny",
                                  "--workdir", workdir, "--stop_after", "2"]))
    assert set(flags.FLAGS) == defined  # none defined meanwhile, so none dropped on exit
  assert flags.FLAGS.is_parsed() and flags.FLAGS["stop_after"].value is None
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    assert [json.loads(line)["step"] for line in f] == [2]
  ckpt = ckpt_lib.Checkpointer(workdir)
  assert ckpt.all_steps() == [2] and ckpt.restore_config()["stage"] == "vqvae"
  assert ckpt.restore_config()["train"]["num_steps"] == 4
  ckpt.close()


class _Initialized(Exception):
  """Raised by the stand-in for jax.distributed.initialize: the trainer goes no further."""


@covers("train --coordinator_address", "train --num_processes", "train --process_id")
def test_train_multihost_flags_reach_jax_distributed(tmp_path, monkeypatch):
  """The three flags are what ``jax.distributed.initialize`` receives, before anything touches a
  device. (That ``maybe_initialize`` then forms a working 2-process run is shown by
  test_multihost.py and test_launchers.py; here no second process is started.)"""
  import grain  # pylint: disable=import-outside-toplevel,unused-import
  from absl import flags  # pylint: disable=import-outside-toplevel
  from absl.testing import flagsaver  # pylint: disable=import-outside-toplevel
  from vqd_jax import distributed, train  # pylint: disable=import-outside-toplevel
  from vqd_jax.data import pipeline  # pylint: disable=import-outside-toplevel,unused-import
  received = {}

  def initialize(**kwargs):
    received.update(kwargs)
    raise _Initialized

  monkeypatch.setattr(jax.distributed, "initialize", initialize)
  monkeypatch.setattr(distributed, "use_cpu_collectives", lambda: None)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
               "JAX_LOCAL_DEVICE_IDS"):
    monkeypatch.delenv(name, raising=False)
  defined = set(flags.FLAGS)
  with flagsaver.flagsaver(), pytest.raises(_Initialized):
    train.main(train.parse_flags([
        "python -m vqd_jax.train", "--config", "configs/vqvae.py:tiny",
        "--workdir", str(tmp_path / "run"), "--coordinator_address", "10.0.0.1:1234",
        "--num_processes", "4", "--process_id", "3"]))
  assert set(flags.FLAGS) == defined
  assert received == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                      "process_id": 3, "local_device_ids": None}
  assert not os.path.exists(tmp_path / "run")  # stopped before the run was touched
