"""Converts between vqd_jax runs and the diffusers VQ-Diffusion layout, and FID Inception weights.

  # A trained vqd_jax diffusion run (+ its VQ autoencoder and null embedding) -> diffusers folder:
  python -m vqd_jax.convert export --workdir runs/quickstart/diffusion --out exported/

  # Load a diffusers folder (hub checkpoint or an export) and print its components and shapes:
  python -m vqd_jax.convert check exported/

  # pytorch-fid's FID InceptionV3 weights (.pth, needs torch) -> .safetensors (loads without torch):
  python -m vqd_jax.convert inception pt_inception-2015-12-05-6726825d.pth fid_inception.safetensors

``export`` writes ``transformer/``, ``vqvae/``, ``scheduler/``,
``learned_classifier_free_sampling_embeddings/`` (config.json + diffusion_pytorch_model.safetensors
each) and ``model_index.json``; diffusers loads these with ``Transformer2DModel``, ``VQModel``,
``VQDiffusionScheduler`` ``.from_pretrained(out, subfolder=...)``. A from-scratch run's word tokenizer
and small text encoder have no diffusers class: they are written as the vqd_jax-specific
``vqd_jax_tokenizer/`` and ``vqd_jax_text_encoder/``, which only vqd_jax reads
(``VQDiffusionPipeline.from_pretrained(out)`` samples with the whole exported run).

``inception`` reads the ``.pth`` with ``torch.load(weights_only=True)`` (no code runs), checks every
tensor against the FID network, writes the ``.safetensors`` file and loads it back;
``vqd_jax.evaluation.inception.load_inception`` then reads it for FID, KID and the Inception Score.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m vqd_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  export = commands.add_parser(
      "export", help="Write a trained vqd_jax diffusion run as a diffusers VQ-Diffusion folder.",
      description="Write a trained vqd_jax diffusion run (transformer, its VQ autoencoder, null "
                  "embedding, scheduler; text side as vqd_jax-specific files) in the diffusers "
                  "layout.")
  export.add_argument("--workdir", required=True,
                      help="Workdir of a trained diffusion run (python -m vqd_jax.train ...).")
  export.add_argument("--out", required=True,
                      help="Output folder for the diffusers layout (created if missing).")
  export.add_argument("--step", type=int, default=None,
                      help="Checkpoint step to export (default: the latest).")
  export.add_argument("--no-ema", action="store_true",
                      help="Export the raw instead of the EMA parameters.")
  check = commands.add_parser(
      "check", help="Load a diffusers VQ-Diffusion folder and print its components and shapes.",
      description="Load every component of a diffusers VQ-Diffusion folder into vqd_jax and "
                  "print what it holds.")
  check.add_argument("path", help="The pipeline folder (the one holding model_index.json).")
  inception = commands.add_parser(
      "inception", help="Convert pytorch-fid's FID InceptionV3 weights (.pth) to .safetensors.",
      description="Read pytorch-fid's FID InceptionV3 weights (the state dict of "
                  "fid_inception_v3(), e.g. pt_inception-2015-12-05-6726825d.pth) with "
                  "torch.load(weights_only=True), check them and write them as .safetensors, "
                  "which vqd_jax loads without torch.")
  inception.add_argument("src", help="The weights file to read: a PyTorch .pth/.pt (needs "
                                     "torch) or a .safetensors file in the same layout.")
  inception.add_argument("dst", help="The .safetensors file to write (its folder is created).")
  return parser


def export_run(workdir: str, out: str, step: int | None = None, use_ema: bool = True
               ) -> tuple[int, list[str]]:
  """Exports a trained run; returns ``(checkpoint step, notes)``."""
  from vqd_jax.inference import VQDiffusionPipeline  # pylint: disable=import-outside-toplevel
  pipe = VQDiffusionPipeline.from_run(workdir, step=step, use_ema=use_ema)
  return pipe.checkpoint_step, pipe.save_pretrained(out)


def _summary(tree) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  leaves = jax.tree_util.tree_leaves(tree)
  count = sum(math.prod(x.shape) for x in leaves)
  return f"{len(leaves)} tensors, {count:,} parameters"


def check(path: str) -> list[str]:
  """Loads ``path`` with vqd_jax; returns the report lines."""
  import flax.traverse_util  # pylint: disable=import-outside-toplevel
  from vqd_jax.interop import diffusers_pipeline as layout  # pylint: disable=import-outside-toplevel

  index = layout.read_model_index(path)
  lines = [f"{path}: {index.get('_class_name', '?')} (diffusers {index.get('_diffusers_version', '?')})"]
  for name, entry in sorted((k, v) for k, v in index.items() if not k.startswith("_")):
    lines.append(f"  {name:<46} {entry[0]}.{entry[1]}" if layout.listed(index, name)
                 else f"  {name:<46} (none)")
  c = layout.load_pipeline_components(path)
  f = c.transformer_fields
  lines.append(f"transformer: {f['num_layers']} layers x {f['num_heads']} heads x {f['head_dim']} "
               f"(width {f['num_heads'] * f['head_dim']}), K = {f['num_classes']} codes, "
               f"{f['height']}x{f['width']} tokens, text width {f['cross_attention_dim']}; "
               + _summary(c.transformer_params))
  flat = flax.traverse_util.flatten_dict(c.transformer_params, sep="/")
  for key in sorted(flat)[:6]:
    lines.append(f"    {key}: {tuple(flat[key].shape)}")
  v = c.vq_model
  lines.append(f"vqvae: channels {tuple(v.block_out_channels)}, {v.num_vq_embeddings} codes x "
               f"{v.vq_embed_dim}, downsampling x{v.downsample_factor}; " + _summary(c.vq_params))
  text_what = ("CLIP " + f"{c.text_encoder.config.num_hidden_layers} layers x "
               f"{c.text_encoder.config.hidden_size}" if c.text_kind == "clip" else
               "vqd_jax TextEncoder (vqd_jax-specific; diffusers cannot load it)")
  lines.append(f"text encoder: {text_what}; " + _summary(c.text_params))
  lines.append(f"scheduler: T = {c.process.num_timesteps}, schedule {c.process.schedule!r}")
  lines.append("null embedding: " + ("none (CLIP(\"\") normalised)" if c.null_embedding is None
                                     else f"learned {tuple(c.null_embedding.shape)}"))
  return lines


def convert_inception(src: str, dst: str) -> list[str]:
  """Writes the FID Inception weights ``src`` as ``dst`` (.safetensors), loads it back; returns
  the report lines. Raises ValueError, OSError or ImportError with the problem and the fix."""
  from vqd_jax.interop import inception  # pylint: disable=import-outside-toplevel
  if not dst.endswith(".safetensors"):
    raise ValueError(f"the output {dst!r} must be a .safetensors file (e.g. "
                     "fid_inception.safetensors).")
  if os.path.abspath(src) == os.path.abspath(dst):
    raise ValueError(f"the output {dst!r} is the input; name another file.")
  inception.save_inception_safetensors(inception.read_state_dict(src), dst)
  params = inception.load_inception_params(dst)
  return [f"Wrote {dst}: FID InceptionV3 weights from {src} (pytorch-fid's fid_inception_v3 "
          f"layout), {_summary(params)}; it loads back.",
          f"Load it with vqd_jax.evaluation.inception.load_inception({dst!r})."]


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if args.command == "inception":
    try:
      print("\n".join(convert_inception(args.src, args.dst)))
    except (OSError, ValueError, ImportError) as e:
      raise SystemExit(f"python -m vqd_jax.convert inception: {e}") from None
    return 0
  from vqd_jax import checkpoint  # pylint: disable=import-outside-toplevel
  try:
    if args.command == "export":
      step, notes = export_run(args.workdir, args.out, args.step, use_ema=not args.no_ema)
      print(f"Exported step {step} of {args.workdir} to {args.out} (diffusers layout).")
      for note in notes:
        print(f"Note: {note}")
      return 0
    print("\n".join(check(args.path)))
  except (OSError, ValueError, checkpoint.CheckpointError) as e:
    # Missing or damaged folders and files: each message names the file and the problem.
    raise SystemExit(f"python -m vqd_jax.convert {args.command}: {e}") from None
  return 0


if __name__ == "__main__":
  sys.exit(main())
