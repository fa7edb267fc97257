"""The launchers end to end on one machine: fake ``gcloud``, ``sbatch`` and ``srun``
(tests/launcher_shims) run the workers as local CPU processes joined by jax.distributed, and a
local directory stands in for the bucket or shared filesystem. launch/tpu_pod.sh creates a slice,
trains, then reuses the slice and resumes with more steps; launch/slurm_gpu.sh submits a job that
trains. Dry runs print the commands and run none; bad arguments exit with code 2 and the usage."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jax_test_env import FAST_COMPILE_FLAGS

# Several processes (or SIGKILL timing): run alone, after the parallel pass (pytest.ini).
pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parents[1]
TPU = "launch/tpu_pod.sh"
SLURM = "launch/slurm_gpu.sh"
# The smallest training run: two hosts, one CPU device each, two steps per launch.
TRAIN = ["--config", "configs/vqvae.py:tiny"]


@pytest.fixture(scope="module")
def shims(tmp_path_factory):
  """A folder with the shims, executable."""
  folder = tmp_path_factory.mktemp("launchers") / "bin"
  shutil.copytree(ROOT / "tests" / "launcher_shims", folder)
  for shim in folder.iterdir():
    shim.chmod(0o755)
  return folder


@pytest.fixture
def env(shims, tmp_path):
  """The launchers' environment: the shims first on PATH, then this interpreter. The workers share
  the test processes' persistent compilation cache (conftest.py): all runs compile the same
  programs."""
  (tmp_path / "tpu").mkdir()
  (tmp_path / "slurm").mkdir()
  return dict(
      os.environ, PATH=os.pathsep.join([str(shims), os.path.dirname(sys.executable),
                                        os.environ["PATH"]]),
      TMPDIR=str(tmp_path), FAKE_TPU_ROOT=str(tmp_path / "tpu"),
      FAKE_SLURM_ROOT=str(tmp_path / "slurm"), JAX_PLATFORMS="cpu",
      XLA_FLAGS=FAST_COMPILE_FLAGS, TF_CPP_MIN_LOG_LEVEL="2",
      JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def launch(script, args, env, check=True):
  result = subprocess.run([script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
  if check and result.returncode:
    raise AssertionError(f"{script} exited {result.returncode}:\n{result.stdout[-6000:]}\n"
                         f"{result.stderr[-3000:]}")
  return result


def hosts(stdout):
  """The outputs of the simulated hosts, in order (the shims print them one after the other)."""
  return [part.split("\n", 1)[1] for part in stdout.split("--- host ")[1:]]


def calls(root):
  return (Path(root) / "calls.log").read_text(encoding="utf-8").splitlines()


def metric_steps(workdir):
  with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
    return [json.loads(line)["step"] for line in f]


def test_tpu_pod_creates_the_slice_trains_then_reuses_it_and_resumes(env, tmp_path):
  workdir = tmp_path / "bucket" / "run"
  args = ["vqd-test", "zone-a", "v4-16", "--", *TRAIN, "--workdir", str(workdir)]
  first = launch(TPU, args + ["--config.train.num_steps=2"], env)
  made = [c.split()[3] for c in calls(env["FAKE_TPU_ROOT"])]
  assert made == ["describe", "create", "scp", "ssh", "ssh"]
  workers = [Path(env["FAKE_TPU_ROOT"]) / "vqd-test" / f"worker{i}" for i in range(2)]
  for home in workers:  # every worker unpacked the checkout and installed it
    assert (home / "vqd_jax" / "vqd_jax" / "train.py").is_file()
    assert (home / "pip.log").read_text(encoding="utf-8") == "install -q jax[tpu] -e .\n"
  outputs = hosts(first.stdout)
  assert len(outputs) == 4  # set-up and training, on two workers each
  for out in outputs[2:]:
    assert "Initialised a fresh vqvae run" in out and "Done:" in out
  assert metric_steps(workdir) == [2]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]

  # Again with more steps: the slice exists (no create), and both workers resume at step 2.
  second = launch(TPU, args + ["--config.train.num_steps=4"], env)
  made = [c.split()[3] for c in calls(env["FAKE_TPU_ROOT"])]
  assert made[5:] == ["describe", "scp", "ssh", "ssh"]
  for out in hosts(second.stdout)[2:]:
    assert "Resumed vqvae from step 2" in out and "Done:" in out
  assert metric_steps(workdir) == [2, 4]
  assert "4" in os.listdir(workdir / "checkpoints")


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_slurm_gpu_submits_a_job_that_trains_on_every_node(env, tmp_path):
  workdir = tmp_path / "shared" / "run"
  env["JAX_COORDINATOR_PORT"] = str(free_port())
  train = [*TRAIN, "--config.train.num_steps=2", "--workdir", str(workdir)]
  result = launch(SLURM, ["2", "1", "--", *train], env)
  srun = f"srun --nodes=2 --ntasks-per-node=1 python -m vqd_jax.train {' '.join(train)}"
  assert calls(env["FAKE_SLURM_ROOT"]) == [
      "sbatch --job-name=vqd_jax --nodes=2 --ntasks-per-node=1 --gres=gpu:1 --exclusive --wrap "
      f"env VQD_DISTRIBUTED=1 JAX_LOCAL_DEVICE_IDS=0 {srun}", srun]
  outputs = hosts(result.stdout)
  assert len(outputs) == 2
  for out in outputs:
    assert "Initialised a fresh vqvae run" in out and "Done:" in out
  assert metric_steps(workdir) == [2]


def test_dry_runs_print_the_commands_and_run_nothing(env):
  tpu = launch(TPU, ["--dry-run", "pod", "zone-a", "v5litepod-16", "--", "--config",
                     "configs/diffusion.py:B", "--workdir=gs://b/run", "--config.x=a b"], env)
  lines = tpu.stdout.splitlines()
  assert lines[0] == ("gcloud compute tpus tpu-vm describe pod --zone zone-a >/dev/null 2>&1 || "
                      "gcloud compute tpus tpu-vm create pod --zone zone-a --accelerator-type "
                      "v5litepod-16 --version tpu-ubuntu2204-base")
  tgz = f"{env['TMPDIR']}/vqd_jax_pod.tgz"
  assert lines[1].startswith(f"tar -C {ROOT} --exclude=.git ") and lines[1].endswith(f"{tgz} .")
  assert lines[2] == (f"gcloud compute tpus tpu-vm scp {tgz} 'pod:~/vqd_jax.tgz' --zone zone-a "
                      "--worker=all")
  assert lines[3].startswith("gcloud compute tpus tpu-vm ssh pod --zone zone-a --worker=all "
                             "--command 'set -e; rm -rf ~/vqd_jax;")
  assert "~/vqd_venv/bin/pip install -q '\\''jax[tpu]'\\'' -e ." in lines[3]
  assert lines[4] == (
      "gcloud compute tpus tpu-vm ssh pod --zone zone-a --worker=all --command 'cd ~/vqd_jax && "
      "VQD_DISTRIBUTED=1 ~/vqd_venv/bin/python -m vqd_jax.train --config "
      "configs/diffusion.py:B --workdir=gs://b/run --config.x=a\\ b'")
  assert len(lines) == 5

  slurm = launch(SLURM, ["--dry-run", "4", "8", "--", "--workdir", "/shared/run", "--x=a b"], env)
  assert slurm.stdout == (
      "sbatch --job-name=vqd_jax --nodes=4 --ntasks-per-node=1 --gres=gpu:8 --exclusive --wrap "
      "'env VQD_DISTRIBUTED=1 JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7 srun --nodes=4 "
      "--ntasks-per-node=1 python -m vqd_jax.train --workdir /shared/run "
      + r"'\''--x=a b'\'''" + "\n")
  assert not os.listdir(env["FAKE_TPU_ROOT"]) and not os.listdir(env["FAKE_SLURM_ROOT"])


NO_WORKDIR = "the training arguments need --workdir"


@pytest.mark.parametrize("script, args, error", [
    (TPU, ["pod", "zone-a", "v4-8", "--workdir", "w"], "expected -- after"),
    (TPU, ["pod", "zone-a", "--", "--workdir", "w"], "expected -- after"),
    (TPU, ["pod", "zone-a"], "expected NAME ZONE ACCELERATOR_TYPE -- TRAINING_ARGS"),
    (TPU, ["pod", "zone-a", "v4", "--", "--workdir", "w"], "unknown accelerator type 'v4'"),
    (TPU, ["pod", "zone-a", "v9-8", "--", "--workdir", "w"], "unknown accelerator type 'v9-8'"),
    (TPU, ["pod", "zone-a", "v4-8", "--", "--config", "c"], NO_WORKDIR),
    (SLURM, ["4", "8", "--workdir", "w"], "expected -- after"),
    (SLURM, ["4", "--"], "expected NODES GPUS_PER_NODE -- TRAINING_ARGS"),
    (SLURM, ["four", "8", "--", "--workdir", "w"], "NODES and GPUS_PER_NODE must be positive"),
    (SLURM, ["--dry-run", "4", "8", "--", "--workdirs=w"], NO_WORKDIR),
])
def test_bad_arguments_print_the_usage_and_exit_2(env, script, args, error):
  result = launch(script, args, env, check=False)
  assert result.returncode == 2
  assert result.stdout == ""
  assert f"Error: {error}" in result.stderr
  assert f"{script} [--dry-run] " in result.stderr  # the usage line of the header
  assert not os.listdir(env["FAKE_TPU_ROOT"]) and not os.listdir(env["FAKE_SLURM_ROOT"])
