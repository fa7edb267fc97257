"""Sharding changes where the numbers live, not what they are: a few training steps of both stages
on an 8-device CPU mesh (fsdp, and data x fsdp x tensor) give the one-device losses, and fsdp
really splits the parameters."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import multidevice_worker
from vqd_jax import configs_io
from vqd_jax import sharding
from vqd_jax.training import vqvae_task
from vqd_jax.training import loop

ROOT = Path(__file__).resolve().parents[1]
# Every mesh axis is split in one of the two; a data-only mesh adds no path these do not take.
MESHES = {"fsdp8": {"fsdp": 8}, "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2}}
NUM_STEPS = 4
# Batch 8 splits over 8 devices; the tiny widths (8/16/32 channels, 32 codes, width 32) divide by 8,
# the 33-row token embedding does not divide by tensor=2 (it falls back to replication). The
# autoencoder's warm-up ends after step 2, so steps 3-4 cover k-means init and VQ training.
STAGES = {
    "vqvae": ("configs/vqvae.py:tiny", {"train.batch_size": 8}),
    "diffusion": ("configs/diffusion.py:tiny", {}),
}


def stage_overrides(stage, vq_dir):
  overrides = {"train.num_steps": NUM_STEPS, "train.ckpt_every": 1000, **STAGES[stage][1]}
  if stage == "diffusion":
    overrides["vqvae_workdir"] = vq_dir
  return overrides


def read_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return {str(r["step"]): r["loss"] for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Per stage: one-device losses (this process) and per-mesh results (8-device subprocesses)."""
  base = tmp_path_factory.mktemp("sharding")
  vq_dir = str(base / "vq")
  vqvae_task.save_untrained(vq_dir, configs_io.load_config("configs/vqvae.py:tiny"))
  # One subprocess per stage, running while this process trains the one-device baselines.
  workers = {
      stage: multidevice_worker.start({"devices": 8, "runs": [
          {"config": STAGES[stage][0], "overrides": stage_overrides(stage, vq_dir), "mesh": mesh,
           "workdir": str(base / f"{stage}_{name}"), "inspect": name == "fsdp8"}
          for name, mesh in MESHES.items()]}, cwd=ROOT)
      for stage in STAGES}
  single = {}
  for stage, (spec, _) in STAGES.items():
    config = configs_io.load_config(spec)
    config.train.log_every = 1
    for key, value in stage_overrides(stage, vq_dir).items():
      configs_io.set_field(config, key, str(value))
    workdir = str(base / f"{stage}_single")
    loop.train_and_evaluate(config, workdir)
    single[stage] = read_losses(workdir)
  sharded = {}
  for stage, proc in workers.items():
    result = multidevice_worker.finish(proc)
    assert result["device_count"] == 8
    for name, run in zip(MESHES, result["runs"]):
      sharded[(stage, name)] = run
  return single, sharded


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("stage", list(STAGES))
def test_sharded_losses_equal_one_device_losses(runs, stage, mesh_name):
  single, sharded = runs
  steps = [str(s) for s in range(1, NUM_STEPS + 1)]
  got = sharded[(stage, mesh_name)]["losses"]
  assert sorted(got, key=int) == steps and sorted(single[stage], key=int) == steps
  np.testing.assert_allclose([got[s] for s in steps], [single[stage][s] for s in steps],
                             rtol=1e-4, atol=1e-6)
  # The comparison has teeth: training moved the loss.
  assert len({round(single[stage][s], 6) for s in steps}) > 1


@pytest.mark.parametrize("stage", list(STAGES))
def test_fsdp_splits_the_parameters_over_all_devices(runs, stage):
  params = runs[1][(stage, "fsdp8")]["params"]
  tree = params["transformer"] if stage == "diffusion" else params["all"]
  # Only small vectors (biases, norms) stay whole on every device.
  assert tree["replicated_bytes"] < 0.05 * tree["total_bytes"]
  assert tree["device0_bytes"] <= tree["total_bytes"] / 8 + tree["replicated_bytes"]
  assert params["dtypes"] == ["float32"]


def test_indivisible_axes_fall_back_to_replication():
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  mesh_shape = {"data": 1, "fsdp": 4, "tensor": 2}
  rules = sharding.DEFAULT_RULES

  def spec(shape, names):
    boxed = nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, np.float32), names)
    return sharding.leaf_partition_spec(boxed, mesh_shape, rules)

  assert spec((8, 6), ("embed", "mlp")) == (P("fsdp", "tensor"), [])
  # 6 rows divide by tensor=2 but not by fsdp=4: only the indivisible dimension is replicated.
  assert spec((6, 6), ("embed", "mlp")) == (P(None, "tensor"), ["embed=6 not divisible by fsdp=4"])
  assert spec((33, 8), ("vocab", "embed")) == (P(None, "fsdp"),
                                               ["vocab=33 not divisible by tensor=2"])
  assert sharding.leaf_partition_spec(jax.ShapeDtypeStruct((3,), np.float32), mesh_shape,
                                      rules) == (P(), [])
