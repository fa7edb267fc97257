"""Runs training jobs in a fresh process with simulated CPU devices (and optionally multi-process).

XLA's device count is fixed when jax is imported, so multi-device tests start this script in a
subprocess:

  python tests/multidevice_worker.py '<json spec>'

Spec: ``{"devices": 8, "distributed": null | {"coordinator": "localhost:PORT", "num_processes": 2,
"process_id": 0}, "runs": [{"config": "configs/diffusion.py:tiny", "overrides": {"key": value},
"mesh": {"fsdp": 8}, "workdir": "...", "stop_after": null, "inspect": false}]}``.

The process compiles for speed, not run time (tiny programs). Prints one line ``RESULT <json>``:
per run the logged losses by step (process 0), this host's batch slot and, with
``inspect``, how the freshly initialised state's parameters are laid out over the devices.
"""

import json
import os
import subprocess
import sys

from jax_test_env import FAST_COMPILE_FLAGS


def _setup(spec):
  os.environ["XLA_FLAGS"] = " ".join([
      os.environ.get("XLA_FLAGS", ""), FAST_COMPILE_FLAGS,
      f"--xla_force_host_platform_device_count={spec['devices']}"]).strip()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import jax  # pylint: disable=import-outside-toplevel
  from jax_test_env import use_persistent_compile_cache  # pylint: disable=import-outside-toplevel
  use_persistent_compile_cache(jax)
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.FLAGS.mark_as_parsed()
  dist = spec.get("distributed")
  if dist:
    from vqd_jax import distributed  # pylint: disable=import-outside-toplevel
    distributed.maybe_initialize(dist["coordinator"], dist["num_processes"], dist["process_id"])


def _config(run):
  from vqd_jax import configs_io  # pylint: disable=import-outside-toplevel
  config = configs_io.load_config(run["config"])
  config.train.log_every = 1
  for key, value in run.get("overrides", {}).items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.mesh = dict(run["mesh"])
  return config


def _inspect(config, workdir):
  """Bytes of the initialised params: on device 0, in total, and in fully replicated leaves."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from vqd_jax import sharding  # pylint: disable=import-outside-toplevel
  from vqd_jax.training import tasks  # pylint: disable=import-outside-toplevel
  task = tasks.make_task(config, workdir)
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = sharding.rules_from_config(config.get("sharding_rules"))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    iterator = task.make_train_iterator(*sharding.process_batch_slot(mesh))
    batch = sharding.global_batch(next(iterator), mesh)
    boxed = jax.eval_shape(task.init_state, jax.random.key(0), batch)
    shardings = sharding.tree_shardings(boxed, mesh, rules)
    state = jax.jit(lambda k, b: nn.meta.unbox(task.init_state(k, b)),
                    out_shardings=shardings)(jax.random.key(0), batch)
  device = jax.local_devices()[0]
  report = {}
  subtrees = {"all": state.params}
  if isinstance(state.params, dict):
    subtrees.update(state.params)
  for name, tree in subtrees.items():
    on_device, total, replicated = 0, 0, 0
    for leaf in jax.tree.leaves(tree):
      shard = next(s for s in leaf.addressable_shards if s.device == device)
      on_device += shard.data.nbytes
      total += leaf.nbytes
      replicated += leaf.nbytes if shard.data.nbytes == leaf.nbytes else 0
    report[name] = {"device0_bytes": on_device, "total_bytes": total,
                    "replicated_bytes": replicated}
  report["dtypes"] = sorted({str(x.dtype) for x in jax.tree.leaves(
      (state.params, state.opt_state, state.ema_params)) if x.ndim > 0})
  return report


def main():
  spec = json.loads(sys.argv[1])
  _setup(spec)
  import jax  # pylint: disable=import-outside-toplevel
  from vqd_jax import sharding  # pylint: disable=import-outside-toplevel
  from vqd_jax.training import loop  # pylint: disable=import-outside-toplevel
  results = []
  for run in spec["runs"]:
    config = _config(run)
    out = {}
    if run.get("inspect"):
      out["params"] = _inspect(config, run["workdir"] + "_inspect")
    loop.train_and_evaluate(config, run["workdir"], stop_after=run.get("stop_after"))
    out["batch_slot"] = list(sharding.process_batch_slot(sharding.make_mesh(dict(config.mesh))))
    metrics = os.path.join(run["workdir"], "metrics.jsonl")
    if jax.process_index() == 0:
      with open(metrics, encoding="utf-8") as f:
        out["losses"] = {json.loads(line)["step"]: json.loads(line)["loss"] for line in f}
    results.append(out)
  print("RESULT " + json.dumps({"process_index": jax.process_index(),
                                "process_count": jax.process_count(),
                                "device_count": jax.device_count(), "runs": results}), flush=True)


def start(spec, cwd) -> subprocess.Popen:
  """Starts this script on ``spec`` (for tests); collect the result with :func:`finish`."""
  return subprocess.Popen([sys.executable, os.path.abspath(__file__), json.dumps(spec)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def finish(proc: subprocess.Popen, timeout: float = 600) -> dict:
  """The ``RESULT`` of a process from :func:`start`; raises with its output tail on failure."""
  try:
    stdout, stderr = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    stdout, stderr = proc.communicate()
    raise AssertionError(f"worker timed out after {timeout}s:\n{stdout[-3000:]}\n{stderr[-6000:]}")
  lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode != 0 or not lines:
    raise AssertionError(f"worker failed (exit {proc.returncode}):\n{stdout[-3000:]}\n"
                         f"{stderr[-6000:]}")
  return json.loads(lines[-1][len("RESULT "):])


if __name__ == "__main__":
  main()
