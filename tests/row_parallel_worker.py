"""Samples one exported pipeline on 2 host CPU devices (rows split over them) and on one device.

XLA's device count is fixed when jax is imported, so ``test_pipeline_export`` runs this script in
a subprocess: ``python tests/row_parallel_worker.py FOLDER``. It sets the devices up the way the
command lines do (``vqd_jax.cpu_devices.configure`` with ``VQD_CPU_DEVICES=2``) and prints one line
``RESULT <json>`` with what the test compares.
"""

import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["VQD_CPU_DEVICES"] = "2"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from vqd_jax import cpu_devices  # noqa: E402  pylint: disable=wrong-import-position

CONFIGURED = cpu_devices.configure()

import jax  # noqa: E402  pylint: disable=wrong-import-position,wrong-import-order
import jax.numpy as jnp  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position,wrong-import-order

from vqd_jax import row_blocks  # noqa: E402  pylint: disable=wrong-import-position
from vqd_jax.inference import VQDiffusionPipeline  # noqa: E402  pylint: disable=wrong-import-position


def train_and_sample(workdir: str) -> dict:
  """A tiny diffusion run on the 2 devices with previews (sampling under the training mesh),
  then the run's own sampler with rows split over the devices and on one device."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from vqd_jax import configs_io, diffusion  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from vqd_jax.inference import load_diffusion_run
  from vqd_jax.training import loop, vqvae_task
  flags.FLAGS.mark_as_parsed()
  vq_dir = os.path.join(workdir, "vq")
  vqvae_task.save_untrained(vq_dir, configs_io.load_config("configs/vqvae.py:tiny"))
  config = configs_io.load_config("configs/diffusion.py:tiny", [
      f"vqvae_workdir={vq_dir}", "train.num_steps=2", "train.sample_every=2"])
  dm_dir = os.path.join(workdir, "dm")
  loop.train_and_evaluate(config, dm_dir)
  previews = sorted(f for f in os.listdir(os.path.join(dm_dir, "previews")) if f.endswith(".png"))
  settings = diffusion.SamplerConfig(num_steps=4, guidance_scale=2.0)
  prompts = ["a large red circle", "a small blue square", "a large red square"]
  tokens = {}
  for name in ("sharded", "single"):
    run = load_diffusion_run(dm_dir)  # fresh networks: a fresh jit cache
    generator = dataclasses.replace(run.generator, chunk_rows=None)
    params = run.params
    if name == "single":
      generator = dataclasses.replace(generator, row_mesh=None)
      params = jax.device_put(params, jax.devices()[0])
    ids, mask = run.conditioner.tokenize(prompts)

    def program(params, ids, mask, key, run=run, generator=generator):
      cond = run.conditioner.encode(params, ids, mask)
      return generator.generate_tokens(params["transformer"], cond, key, settings,
                                       null=run.conditioner.null(params, ids.shape[0]))

    tokens[name] = np.asarray(jax.jit(program)(params, jnp.asarray(ids), jnp.asarray(mask),
                                               jax.random.key(4)))
  return {"previews": previews,
          "run_tokens_equal": bool(np.array_equal(tokens["sharded"], tokens["single"]))}


def main(folder: str) -> None:
  sharded = VQDiffusionPipeline.from_pretrained(folder)
  single = VQDiffusionPipeline.from_pretrained(folder)
  single.generator = dataclasses.replace(single.generator, row_mesh=None)
  single.params = jax.device_put(single.params, jax.devices()[0])
  prompts = ["red cat", "blue dog", "red dog"]  # 3 prompts: 6 guided rows, 3 unguided (padded)
  result = {"configured": CONFIGURED, "devices": jax.device_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "mesh_size": None if sharded.generator.row_mesh is None else
            sharded.generator.row_mesh.size}
  tokens = {}
  for name, pipe in (("sharded", sharded), ("single", single)):
    pipe.generator = dataclasses.replace(pipe.generator, chunk_rows=2)
    tokens[name] = [pipe.generate_tokens(prompts, seed=5, guidance_scale=g, truncation_rate=0.9)
                    for g in (3.0, 1.0)]
  result["tokens_equal"] = [bool(np.array_equal(a, b))
                            for a, b in zip(tokens["sharded"], tokens["single"])]
  x_t = np.asarray(tokens["single"][0])
  states = single.encode_prompt(prompts)
  logits = [np.asarray(p.denoise_logits(x_t, states, 2)) for p in (sharded, single)]
  result["logits_max_abs_diff"] = float(np.abs(logits[0] - logits[1]).max())
  # The row helper itself, on a row-wise function, 5 rows over 2 devices (padded to 6).
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
  fn = lambda a: jnp.tanh(a) * a.sum(-1, keepdims=True)
  out = row_blocks.in_row_shards(fn, sharded.generator.row_mesh, 1, x)
  result["rows_max_abs_diff"] = float(np.abs(np.asarray(out) - np.asarray(fn(x))).max())
  result["rows_shape"] = list(out.shape)
  result.update(train_and_sample(os.path.join(folder, "run")))
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
