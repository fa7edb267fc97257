"""Train-step throughput: steps/s, tokens/s, achieved FLOP/s and model FLOPs utilisation.

  python -m vqd_jax.bench train --config configs/diffusion.py:S --config.model.dtype=bfloat16

FLOPs come from XLA's cost analysis of the compiled step; the peak from a per-device-kind table, or on
CPU from a measured float32 matmul. Any config field can be overridden with
``--config.<field>=<value>`` (repeatable), as in ``python -m vqd_jax.train``. A config without a
data source (S, B, ithq) is timed on procedural images of its size.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

# Dense bf16 peak FLOP/s per device (vendor figures).
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def measured_matmul_peak(n: int = 1024, repeats: int = 20) -> float:
  """FLOP/s per device of float32 ``n x n`` matmuls run on every device at once (the CPU 'peak').

  With one XLA device per core (``vqd_jax.cpu_devices``) a lone matmul may still use every core,
  so all devices multiply at the same time and the host total is split evenly.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  from vqd_jax import sharding as sharding_lib  # pylint: disable=import-outside-toplevel
  mesh = sharding_lib.make_mesh({"data": -1})
  count = mesh.size
  a = jax.device_put(jax.random.normal(jax.random.key(0), (count, n, n), jnp.float32),
                     NamedSharding(mesh, PartitionSpec("data")))
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(repeats):
    out = f(a)
  out.block_until_ready()
  return 2 * n**3 * repeats / (time.perf_counter() - t)


def device_peak() -> tuple[float, str]:
  import jax  # pylint: disable=import-outside-toplevel
  kind = jax.devices()[0].device_kind
  for name, flops in PEAK_FLOPS.items():
    if kind.startswith(name):
      return flops, f"{kind} (table)"
  return measured_matmul_peak(), f"{kind} (measured f32 matmul)"


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.bench train", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/diffusion.py:shapes",
                 help="Config and preset to benchmark (default configs/diffusion.py:shapes).")
  p.add_argument("--vqvae-config", default=None,
                 help="Autoencoder config for diffusion configs without a trained vqvae_workdir "
                      "(an untrained one of this config is used; default configs/vqvae.py:shapes).")
  p.add_argument("--steps", type=int, default=20, help="Timed steps after one warm-up step.")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  from vqd_jax import configs_io  # pylint: disable=import-outside-toplevel
  from vqd_jax.benchmarks import common  # pylint: disable=import-outside-toplevel
  parser = build_parser()
  args, overrides = configs_io.parse_args_with_overrides(parser, argv)
  try:
    config = configs_io.load_config(args.config, overrides["config"])
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from vqd_jax import out_of_memory  # pylint: disable=import-outside-toplevel
  from vqd_jax import sharding as sharding_lib  # pylint: disable=import-outside-toplevel

  task = common.prepare_task(config, args.vqvae_config)
  mesh = sharding_lib.make_mesh(dict(config.mesh))
  rules = sharding_lib.rules_from_config(config.sharding_rules)
  with (jax.set_mesh(mesh), nn.logical_axis_rules(rules),
        out_of_memory.explained("the train step", out_of_memory.training_fixes(config))):
    step, batch, key, abstract, shardings = common.compiled_step(task, mesh, rules)
    t = time.perf_counter()
    compiled = step.lower(abstract, batch, key).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))
    state = jax.jit(lambda k, b: nn.meta.unbox(task.init_state(k, b)),
                    out_shardings=shardings)(key, batch)
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    t = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - t) / args.steps
  peak, peak_source = device_peak()
  n_dev = jax.device_count()
  batch_size = int(config.train.batch_size)
  tokens = batch_size * task.num_tokens
  result = {
      "config": args.config, "devices": n_dev, "batch_size": batch_size,
      "steps_per_s": 1 / seconds, "tokens_per_s": tokens / seconds,
      # XLA's cost analysis of an SPMD program counts one device's share.
      "step_flops_per_device": flops, "achieved_flops_per_s": flops * n_dev / seconds,
      "peak_flops_per_s_per_device": peak, "peak_source": peak_source,
      "mfu": flops / seconds / peak, "compile_s": compile_s,
  }
  print(f"steps/s {result['steps_per_s']:.2f} | tokens/s {result['tokens_per_s']:.0f} | "
        f"achieved {result['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s | peak "
        f"{peak / 1e9:.1f} GFLOP/s/device ({peak_source}) | MFU {100 * result['mfu']:.1f}%")
  print(json.dumps(result))
  return 0
