"""Per-device memory of a train step compiled for a mesh, without running it (no training needed).

  python -m vqd_jax.bench memory --config configs/diffusion.py:B --mesh data=1,fsdp=8

On CPU the mesh's devices are simulated (``--xla_force_host_platform_device_count``), so the figures
for a TPU/GPU layout can be read on a laptop. Prints JSON with per-device bytes of parameters,
optimizer state and EMA, their totals, and the compiler's memory analysis.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence


def parse_mesh(text: str) -> dict[str, int]:
  out = {}
  for part in filter(None, text.split(",")):
    name, _, size = part.partition("=")
    out[name.strip()] = int(size)
  return out


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.bench memory", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/diffusion.py:B", help="Config and preset.")
  p.add_argument("--mesh", default="data=1,fsdp=8",
                 help="Mesh axis sizes, e.g. data=2,fsdp=4,tensor=1 (-1 fills the rest).")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="Config override (repeatable), e.g. --set train.batch_size=64.")
  p.add_argument("--vqvae-config", default=None,
                 help="Autoencoder config for diffusion configs without a trained vqvae_workdir.")
  return p


def _bytes_per_device(abstract_tree) -> tuple[int, int]:
  """(bytes on the most loaded device, total bytes) of a tree of sharded ShapeDtypeStructs."""
  import jax  # pylint: disable=import-outside-toplevel
  per_device, total = 0, 0
  for leaf in jax.tree.leaves(abstract_tree):
    size = leaf.dtype.itemsize
    total += math.prod(leaf.shape) * size
    per_device += math.prod(leaf.sharding.shard_shape(leaf.shape)) * size
  return per_device, total


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  mesh_shape = parse_mesh(args.mesh)
  from vqd_jax.benchmarks import common  # pylint: disable=import-outside-toplevel
  if all(v > 0 for v in mesh_shape.values()):
    common.set_host_device_count(math.prod(mesh_shape.values()))  # before jax is imported
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from vqd_jax import configs_io  # pylint: disable=import-outside-toplevel
  from vqd_jax import sharding as sharding_lib  # pylint: disable=import-outside-toplevel

  config = configs_io.load_config(args.config, args.set)
  with config.unlocked():
    config.mesh = mesh_shape
  task = common.prepare_task(config, args.vqvae_config)
  mesh = sharding_lib.make_mesh(mesh_shape)
  rules = sharding_lib.rules_from_config(config.get("sharding_rules"))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    step, batch, key, abstract, _ = common.compiled_step(task, mesh, rules)
    compiled = step.lower(abstract, batch, key).compile()
  report = {"config": args.config, "mesh": dict(zip(mesh.axis_names, mesh.devices.shape)),
            "devices": int(mesh.devices.size)}
  for name in ("params", "opt_state", "ema_params"):
    per_device, total = _bytes_per_device(getattr(abstract, name))
    report[f"{name}_bytes_per_device"] = per_device
    report[f"{name}_bytes_total"] = total
  state_dev = sum(report[f"{n}_bytes_per_device"] for n in ("params", "opt_state", "ema_params"))
  state_tot = sum(report[f"{n}_bytes_total"] for n in ("params", "opt_state", "ema_params"))
  report["state_bytes_per_device"] = state_dev
  report["state_bytes_total"] = state_tot
  report["state_fraction_per_device"] = state_dev / max(state_tot, 1)
  mem = compiled.memory_analysis()
  if mem is not None:
    for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                  "alias_size_in_bytes", "generated_code_size_in_bytes"):
      report[field] = int(getattr(mem, field, 0) or 0)
    report["peak_bytes_estimate"] = (report["argument_size_in_bytes"] +
                                     report["output_size_in_bytes"] +
                                     report["temp_size_in_bytes"] - report["alias_size_in_bytes"])
  print(json.dumps(report, indent=2))
  return 0
