"""Multi-host training on one machine: two processes (4 CPU devices each, gloo collectives) train
the diffusion stage, checkpoint, stop, restart and continue, with the losses of one uninterrupted
single-process run; process 0 alone writes metrics and sample previews. Per-host data slices
rebuild exactly the single-process global batches."""

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

import multidevice_worker
from vqd_jax import configs_io
from vqd_jax import data
from vqd_jax import checkpoint as ckpt_lib
from vqd_jax.training import vqvae_task
from vqd_jax.training import loop

# Several processes (or SIGKILL timing): run alone, after the parallel pass (pytest.ini).
pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parents[1]
NUM_PROCESSES = 2


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("process_count", [2, 4])
def test_host_slices_concatenate_to_the_single_process_batches(process_count):
  # What jax.make_array_from_process_local_data does with host blocks: concatenate them in process
  # order. The result must be the one-process batch row for row (per-row randomness follows rows).
  src = data.ShapesSource(resolution=32, seed=1, length=100)
  kw = dict(image_size=32, seed=3, tokenize=lambda c: (np.array([len(c)]), np.array([True])))
  single = data.make_pipeline(src, batch_size=8, **kw)
  hosts = [data.make_pipeline(src, batch_size=8 // process_count, process_index=h,
                              process_count=process_count, **kw) for h in range(process_count)]
  for _ in range(14):  # 14 batches of 8 cross the 100-example epoch boundary
    expected = next(single)
    parts = [next(h) for h in hosts]
    for key in ("image", "text_ids"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), expected[key])


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return [r["step"] for r in rows], {r["step"]: r["loss"] for r in rows}


def _run_two_processes(run):
  port = free_port()
  procs = [multidevice_worker.start({
      "devices": 4, "runs": [run],
      "distributed": {"coordinator": f"localhost:{port}", "num_processes": NUM_PROCESSES,
                      "process_id": i}}, cwd=ROOT) for i in range(NUM_PROCESSES)]
  results = [multidevice_worker.finish(p, timeout=300) for p in procs]
  for i, r in enumerate(results):
    assert (r["process_index"], r["process_count"], r["device_count"]) == (i, NUM_PROCESSES, 8)
    assert r["runs"][0]["batch_slot"] == [i, NUM_PROCESSES]  # host i loads batch block i of 2
  return results


def test_two_processes_kill_and_resume_match_one_uninterrupted_process(tmp_path):
  vq_dir = str(tmp_path / "vq")
  vqvae_task.save_untrained(vq_dir, configs_io.load_config("configs/vqvae.py:tiny"))
  overrides = {"vqvae_workdir": vq_dir, "train.num_steps": 4, "train.ckpt_every": 2}

  config = configs_io.load_config("configs/diffusion.py:tiny")
  config.train.log_every = 1
  for key, value in overrides.items():
    configs_io.set_field(config, key, str(value))
  straight = str(tmp_path / "straight")
  loop.train_and_evaluate(config, straight)

  resumed = str(tmp_path / "two_hosts")
  # Every process sees the same local filesystem, as hosts see a shared bucket.
  # Sample previews need the sharded weights gathered from both hosts; process 0 writes them.
  run = {"config": "configs/diffusion.py:tiny", "mesh": {"data": -1}, "workdir": resumed,
         "overrides": dict(overrides, **{"train.sample_every": 2}), "stop_after": 2}
  first = _run_two_processes(run)
  ckpt = ckpt_lib.Checkpointer(resumed)
  assert ckpt.latest_step() == 2
  ckpt.close()
  assert "losses" not in first[1]["runs"][0]  # only process 0 reads back (and writes) metrics
  second = _run_two_processes(dict(run, stop_after=None))

  steps, got = _losses(resumed)
  assert steps == [1, 2, 3, 4]  # one writer: no line twice, none lost across the restart
  assert second[0]["runs"][0]["losses"] == {str(k): v for k, v in got.items()}
  _, expected = _losses(straight)
  np.testing.assert_allclose([got[s] for s in steps], [expected[s] for s in steps], rtol=1e-4,
                             atol=1e-6)
  assert got[3] != got[2]  # the resumed steps are new work, not a replay
  previews = sorted(os.listdir(os.path.join(resumed, "previews")))
  assert previews == ["prompts.json", "samples_0000002.png", "samples_0000004.png"]
