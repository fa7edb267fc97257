"""Encodes a dataset into VQ token arrays once, so diffusion training never re-encodes images.

  python -m vqd_jax.encode --vqvae-workdir runs/vq --config configs/diffusion.py:shapes \
      --out runs/tokens

Reads the images named by the diffusion config's ``data`` section, encodes them with the trained
autoencoder and writes array_record token records (``tokens`` int32 ``[h*w]`` and ``caption``) that
``data.source='tokens'`` reads. Config fields are overridden as in ``python -m vqd_jax.train``, e.g.
``--config.data.source=folder --config.data.path=DIR``.

``--coarse-clusters C`` also writes CTF's code -> cluster table (k-means of the autoencoder's
codebook, ``coarse_table.json``) beside the records, for ``configs/ctf.py`` runs.

Sources enabled in the config's ``embeddings`` section (a T5, CLIP text or CLIP image encoder
folder, e.g. ``--config.embeddings.t5.path=DIR``) are run here, once, and their outputs stored in
the records (float16), so training never runs them; the size per example is printed first.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from vqd_jax import configs_io, cpu_devices, out_of_memory


def embedding_bytes(source) -> int:
  """Bytes one record spends on ``source`` (float16 vectors, one byte per mask entry)."""
  return 2 * source.length * source.width + source.length + 2 * source.pooled_width


def load_embedders(config) -> list[tuple[Any, Any]]:
  """``[(EmbeddingSource, frozen encoder)]`` for the sources ``config.embeddings`` enables."""
  from vqd_jax import build, text  # pylint: disable=import-outside-toplevel
  embedders = []
  for name, section in build.configured_embeddings(config).items():
    encoder = text.frozen.load_source_encoders({name: section.path}, what="config.embeddings")[name]
    length = int(section.get("max_length", 0) or 0)
    embedders.append((text.frozen.source_layout(encoder, length, float(section.drop_rate)),
                      encoder))
  return embedders


def encode_dataset(vq, data_cfg, out: str, *, num_examples: int | None = None,
                   batch_size: int = 256, embedders: Sequence[tuple[Any, Any]] = ()
                   ) -> dict[str, int]:
  """Encodes ``num_examples`` (default: all) examples of ``data_cfg``'s source into ``out``, with
  the outputs of ``embedders`` (:func:`load_embedders`) beside the tokens."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  from vqd_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from vqd_jax.data import configured as data_config  # pylint: disable=import-outside-toplevel
  from vqd_jax import text as text_lib  # pylint: disable=import-outside-toplevel

  source = data_config.make_source(data_cfg)
  total = len(source) if num_examples is None else min(num_examples, len(source))
  images_of = data_lib.image_loader(source, image_size=data_cfg.image_size)

  def records():
    with tqdm(total=total, desc="encoding", unit="img") as bar:
      for start in range(0, total, batch_size):
        idx = range(start, min(start + batch_size, total))
        loaded = [images_of(i) for i in idx]
        loaded = [r for r in loaded if r is not None]  # unreadable records are counted there
        if loaded:
          imgs = np.stack([r["image"] for r in loaded])
          n = len(imgs)
          if n < batch_size:  # keep one compiled shape
            imgs = np.concatenate([imgs, np.repeat(imgs[-1:], batch_size - n, 0)])
          codes = np.asarray(vq.encode(jnp.asarray(imgs)))[:n].reshape(n, -1).astype(np.int32)
          entries = text_lib.frozen.embed_inputs(
              {s.name: e for s, e in embedders}, [s for s, _ in embedders],
              prompts=[r["caption"] for r in loaded], images=imgs[:n])
          for i, (r, c) in enumerate(zip(loaded, codes)):
            yield {"tokens": c, "caption": r["caption"], **{k: v[i] for k, v in entries.items()}}
        bar.update(len(idx))

  from vqd_jax import ctf  # pylint: disable=import-outside-toplevel
  stale = os.path.join(out, ctf.COARSE_TABLE_FILE)
  if os.path.exists(stale):  # it described the codes being replaced
    os.remove(stale)
  layout = [dataclasses.asdict(s) for s, _ in embedders]
  written = data_lib.write_token_records(out, records(), embeddings=layout,
                                         autoencoder=vq.fingerprint)
  return {"examples": int(written), "requested": int(total)}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.encode", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--vqvae-workdir", required=True, help="Workdir of the trained autoencoder.")
  p.add_argument("--config", required=True,
                 help="Config whose data section names the images, e.g. configs/diffusion.py:shapes.")
  p.add_argument("--out", required=True, help="Folder for the token records.")
  p.add_argument("--num-examples", type=configs_io.int_at_least(1), default=None,
                 help="Encode only the first N examples (the shapes source is effectively "
                      "unbounded, so set it there).")
  p.add_argument("--batch-size", type=configs_io.int_at_least(1), default=256,
                 help="Images per encoder call.")
  p.add_argument("--coarse-clusters", type=configs_io.int_at_least(0), default=0,
                 help="Also cluster the codebook into this many coarse labels (CTF) and write "
                      "the code -> cluster table beside the records (default 0: none).")
  p.add_argument("--coarse-balanced", action="store_true",
                 help="Equal-size clusters (the codebook size must be a multiple of C).")
  p.add_argument("--coarse-seed", type=int, default=0, help="Seed of the k-means.")
  return p


def write_coarse_table(vq, out: str, num_clusters: int, balanced: bool = False,
                       seed: int = 0) -> float:
  """Clusters ``vq``'s codebook and writes the table into ``out``; returns the inertia."""
  from vqd_jax import ctf  # pylint: disable=import-outside-toplevel
  result = ctf.kmeans(vq.codebook, num_clusters, seed=seed, balanced=balanced)
  ctf.save_coarse_table(out, result.labels, num_clusters=num_clusters, balanced=balanced,
                        seed=seed, inertia=result.inertia)
  return result.inertia


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args, overrides = configs_io.parse_args_with_overrides(parser, argv)
  cpu_devices.configure()  # before jax is imported
  from vqd_jax.inference import load_autoencoder  # pylint: disable=import-outside-toplevel
  try:
    config = configs_io.load_config(args.config, overrides["config"])
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  from vqd_jax.data import DataSourceError  # pylint: disable=import-outside-toplevel
  from vqd_jax.data import configured as data_config  # pylint: disable=import-outside-toplevel
  from vqd_jax.inference import loading  # pylint: disable=import-outside-toplevel
  try:
    data_config.check_data_config(config.data)
  except ValueError as e:
    parser.error(str(e))
  t0 = time.perf_counter()
  try:
    vq = load_autoencoder(args.vqvae_workdir)
  except (loading.MissingRunError, loading.RunMismatchError) as e:
    parser.error(f"--vqvae-workdir: {e}")
  if args.coarse_clusters and not 1 <= args.coarse_clusters <= vq.num_codes:
    parser.error(f"--coarse-clusters must be between 1 and the {vq.num_codes} codes, got "
                 f"{args.coarse_clusters}.")
  if args.coarse_balanced and args.coarse_clusters and vq.num_codes % args.coarse_clusters:
    parser.error(f"--coarse-balanced needs the {vq.num_codes} codes to split evenly into "
                 f"--coarse-clusters {args.coarse_clusters}; pick a divisor.")
  try:
    embedders = load_embedders(config)
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  if embedders:
    per_example = sum(embedding_bytes(s) for s, _ in embedders)
    count = args.num_examples or "every"
    print(f"Embeddings ({', '.join(s.name for s, _ in embedders)}): {per_example / 1024:.1f} KiB "
          f"per example (float16), for {count} examples.")
  try:
    with out_of_memory.explained("encoding", out_of_memory.batch_size_fix(args.batch_size)):
      stats = encode_dataset(vq, config.data, args.out, num_examples=args.num_examples,
                             batch_size=args.batch_size, embedders=embedders)
  except DataSourceError as e:
    raise SystemExit(f"Error: {e}") from None
  if args.coarse_clusters:
    try:
      inertia = write_coarse_table(vq, args.out, args.coarse_clusters, args.coarse_balanced,
                                   args.coarse_seed)
    except ValueError as e:
      parser.error(str(e))
    print(f"Coarse labels: {args.coarse_clusters} clusters of the {vq.num_codes} codes "
          f"(inertia {inertia:.4g}).")
  print(f"Encoded {stats['examples']} of {stats['requested']} examples into {args.out} in "
        f"{time.perf_counter() - t0:.1f}s.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
