"""Per-device memory of the train state (and of a compiled train step) on a mesh, without training.

  python -m vqd_jax.bench memory --config configs/diffusion.py:B --mesh data=1,fsdp=8

On CPU the mesh's devices are simulated (``--xla_force_host_platform_device_count``), so the figures
for a TPU/GPU layout can be read on a laptop. Prints JSON with per-device bytes of parameters,
optimizer state and EMA, their totals, the ideal per-device share (weights are split over fsdp x
tensor and copied over data), the largest arrays left whole on every device, and (unless
``--no-compile``) the compiler's memory analysis of one train step. Any config field can be
overridden with ``--config.<field>=<value>`` (repeatable), as in ``python -m vqd_jax.train``.

The state figures hold on every backend; the compiled step's temporary bytes are the backend's
own. XLA's CPU backend does not realise remat's savings (B at batch 8: 52.7 GB with remat, 53.0
without, while the backward keeps 0.54 GB against 42.8 GB of residuals), so read them on the
backend that will train.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence

STATE_PARTS = ("params", "opt_state", "ema_params")
# The state may exceed its ideal share by this factor (replicated biases, norms, odd-sized tables).
ALLOWED_OVERHEAD = 1.1


def parse_mesh(text: str) -> dict[str, int]:
  out = {}
  for part in filter(None, text.split(",")):
    name, sep, size = part.partition("=")
    if not sep:
      raise ValueError(f"--mesh entries look like fsdp=8, got {part!r}.")
    out[name.strip()] = int(size)
  return out


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.bench memory", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/diffusion.py:B", help="Config and preset.")
  p.add_argument("--mesh", default="data=1,fsdp=8",
                 help="Mesh axis sizes, e.g. data=2,fsdp=4,tensor=1 (-1 fills the rest).")
  p.add_argument("--vqvae-config", default=None,
                 help="Autoencoder config for diffusion configs without a trained vqvae_workdir "
                      "(default by image size: configs/vqvae.py:shapes for 32px, "
                      "configs/vqvae.py:ithq for 256px).")
  p.add_argument("--no-compile", action="store_true",
                 help="Only the state's layout (seconds); skip compiling the step for the "
                      "compiler's memory analysis (minutes for the large presets on CPU).")
  return p


def largest_replicated(abstract_tree, count: int = 5) -> list[tuple[str, int]]:
  """The ``count`` largest leaves stored whole on every device, as ``(path, bytes)``."""
  import jax  # pylint: disable=import-outside-toplevel
  whole = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_tree):
    nbytes = math.prod(leaf.shape) * leaf.dtype.itemsize
    if nbytes and leaf.sharding.shard_shape(leaf.shape) == tuple(leaf.shape):
      whole.append((jax.tree_util.keystr(path), nbytes))
  return sorted(whole, key=lambda x: -x[1])[:count]


def state_report(abstract, mesh) -> dict:
  """Per-device and total bytes of the state parts of ``abstract`` (sharded ShapeDtypeStructs)."""
  from vqd_jax import sharding as sharding_lib  # pylint: disable=import-outside-toplevel
  report = {}
  for name in STATE_PARTS:
    per_device, total, replicated = sharding_lib.bytes_per_device(getattr(abstract, name))
    report[f"{name}_bytes_per_device"] = per_device
    report[f"{name}_bytes_total"] = total
    report[f"{name}_bytes_replicated"] = replicated
  state_dev = sum(report[f"{n}_bytes_per_device"] for n in STATE_PARTS)
  state_tot = sum(report[f"{n}_bytes_total"] for n in STATE_PARTS)
  ideal = 1 / (mesh.shape["fsdp"] * mesh.shape["tensor"])
  report.update(
      state_bytes_per_device=state_dev, state_bytes_total=state_tot,
      state_fraction_per_device=state_dev / max(state_tot, 1),
      ideal_state_fraction=ideal, allowed_state_fraction=ideal * ALLOWED_OVERHEAD,
      state_within_allowed=state_dev <= state_tot * ideal * ALLOWED_OVERHEAD,
      largest_replicated_params=largest_replicated(abstract.params))
  return report


def main(argv: Sequence[str] | None = None) -> int:
  from vqd_jax import configs_io  # pylint: disable=import-outside-toplevel
  parser = build_parser()
  args, overrides = configs_io.parse_args_with_overrides(parser, argv)
  mesh_shape = parse_mesh(args.mesh)
  from vqd_jax.benchmarks import common  # pylint: disable=import-outside-toplevel
  if all(v > 0 for v in mesh_shape.values()):
    common.set_host_device_count(math.prod(mesh_shape.values()))  # before jax is imported
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from vqd_jax import sharding as sharding_lib  # pylint: disable=import-outside-toplevel

  try:
    config = configs_io.load_config(args.config, overrides["config"])
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  with config.unlocked():
    config.mesh = mesh_shape
  task = common.prepare_task(config, args.vqvae_config)
  mesh = sharding_lib.make_mesh(mesh_shape)
  rules = sharding_lib.rules_from_config(config.sharding_rules)
  report = {"config": args.config, "mesh": dict(zip(mesh.axis_names, mesh.devices.shape)),
            "devices": int(mesh.devices.size)}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    if args.no_compile:
      _, _, abstract, _ = common.abstract_state(task, mesh, rules)
      compiled = None
    else:
      step, batch, key, abstract, _ = common.compiled_step(task, mesh, rules)
      compiled = step.lower(abstract, batch, key).compile()
  report.update(state_report(abstract, mesh))
  mem = compiled.memory_analysis() if compiled is not None else None
  if mem is not None:
    for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                  "alias_size_in_bytes", "generated_code_size_in_bytes"):
      report[field] = int(getattr(mem, field, 0) or 0)
    report["peak_bytes_estimate"] = (report["argument_size_in_bytes"] +
                                     report["output_size_in_bytes"] +
                                     report["temp_size_in_bytes"] - report["alias_size_in_bytes"])
  print(json.dumps(report, indent=2))
  return 0
