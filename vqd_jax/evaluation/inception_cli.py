"""``python -m vqd_jax.evaluate fid | kid | is``: Inception metrics of a folder of samples.

  python -m vqd_jax.evaluate fid --samples runs/samples --reference data/val_images \\
      --inception pt_inception-2015-12-05-6726825d.pth --save-reference-stats val_stats.npz
  python -m vqd_jax.evaluate fid --samples runs/samples --reference val_stats.npz --inception ...
  python -m vqd_jax.evaluate kid --samples runs/samples --reference data/val_images --inception ...
  python -m vqd_jax.evaluate is --samples runs/samples --inception ...
  python -m vqd_jax.evaluate fid --features clip --clip runs/clip --samples ... --reference DIR

Each prints its figure as the last line (``fid 12.3456``, ``kid 0.0123``, ``is 3.4567``) and
writes a JSON report beside the samples (``fid.json``, ``kid.json``, ``is.json``). With
``--features clip`` the FID is taken over CLIP image embeddings instead
(:mod:`vqd_jax.evaluation.clip_features`): ``fid_clip 1.2345`` and ``fid_clip.json``, labelled
as not comparable with published FIDs.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np

WEIGHTS_HELP = ("FID Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or a "
                ".safetensors file from `python -m vqd_jax.convert inception`.")
SAMPLES_HELP = ("Folder of images: those its samples.jsonl lists (a `python -m vqd_jax.sample` "
                "folder), else every .png/.jpg/.jpeg/.webp/.bmp below it. Unreadable files are "
                "skipped and counted.")


def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def _metric_parser(sub: Any, name: str, title: str, description: str,
                   inception_required: bool = True) -> argparse.ArgumentParser:
  """A subcommand with the flags every Inception metric takes."""
  parser = sub.add_parser(name, help=title, description=description)
  parser.add_argument("--samples", required=True, metavar="DIR", help=SAMPLES_HELP)
  parser.add_argument("--inception", required=inception_required, metavar="PATH",
                      help=WEIGHTS_HELP + ("" if inception_required else
                                           " Required unless --features clip."))
  parser.add_argument("--batch-size", type=_positive_int, default=50, metavar="N",
                      help="Images per Inception call (default 50).")
  parser.add_argument("--output", default=None, metavar="FILE",
                      help=f"Where to write the JSON report (default: DIR/{name}.json).")
  parser.add_argument("--no-progress", action="store_true", help="Hide the progress bars.")
  return parser


# name, title, description, what an .npz reference holds, the flag that saves it, what it saves.
REFERENCE_METRICS = (
    ("fid", "Fréchet Inception Distance of samples to a reference.",
     "FID between the Inception pool features of SAMPLES and of a reference (a folder, or an .npz "
     "of statistics); the matrix square root taken as pytorch-fid takes it. Prints `fid <value>` "
     "last; writes DIR/fid.json.",
     "an .npz with arrays mu and sigma (pytorch-fid's format, or --save-reference-stats)",
     "--save-reference-stats",
     "the reference folder's statistics (mu, sigma; pytorch-fid's format) here, for later runs"),
    ("kid", "Kernel Inception Distance of samples to a reference.",
     "KID: unbiased MMD^2 under the kernel (x.y/d + 1)^3 of Inception pool features, mean and "
     "standard deviation over random subsets. KID needs the reference's features, not its "
     "statistics. Prints `kid <mean>` last; writes DIR/kid.json.",
     "an .npz of features written by --save-reference-features",
     "--save-reference-features",
     "the reference folder's pool features [N, 2048] here, for later runs"),
)


def add_parsers(sub: Any) -> None:
  """Adds the ``fid``, ``kid`` and ``is`` subcommands to ``sub`` (an argparse subparsers object)."""
  parsers = {}
  for name, title, description, npz, save_flag, saved in REFERENCE_METRICS:
    parser = parsers[name] = _metric_parser(sub, name, title, description,
                                            inception_required=name != "fid")
    parser.add_argument("--reference", required=True, metavar="DIR_OR_NPZ",
                        help=f"Reference images (a folder, read like --samples) or {npz}.")
    parser.add_argument(save_flag, default=None, metavar="FILE.npz", help=f"Also save {saved}.")
  parsers["fid"].add_argument(
      "--features", choices=("inception", "clip"), default="inception",
      help="Features the distance is taken over: the FID Inception's pool features (default), "
           "or the CLIP image embeddings of --clip (fid_clip: for use without the Inception "
           "weights; not comparable with published FIDs; writes DIR/fid_clip.json).")
  parsers["fid"].add_argument("--clip", default=None, metavar="DIR",
                              help="With --features clip: a CLIP model folder, or a contrastive "
                                   "run with clip_text/ and clip_image/.")
  kid = parsers["kid"]
  kid.add_argument("--num-subsets", type=_positive_int, default=100, metavar="N",
                   help="Random subset pairs averaged over (default 100).")
  kid.add_argument("--subset-size", type=_positive_int, default=1000, metavar="M",
                   help="Images per subset (default 1000; clipped to the smaller set, with a "
                        "warning).")
  kid.add_argument("--seed", type=int, default=0, help="Seed of the subsets (default 0).")
  inception_score = _metric_parser(
      sub, "is", "Inception Score of samples.",
      "IS: exp(mean KL(p(y|x) || p(y))) with p(y|x) the softmax over all 1008 Inception logits "
      "(fc without its bias, as the original code and torch-fidelity take them), per split of "
      "the shuffled samples; mean and standard deviation over the splits. Prints "
      "`is <mean>` last; writes DIR/is.json.")
  inception_score.add_argument("--splits", type=_positive_int, default=10, metavar="N",
                               help="Splits of the samples (default 10).")
  inception_score.add_argument("--seed", type=int, default=2020,
                               help="Seed of the shuffle before splitting (default 2020, "
                                    "torch-fidelity's).")
  inception_score.add_argument("--no-shuffle", action="store_true",
                               help="Split in file order, as the original Inception Score code "
                                    "(a samples.jsonl lists each prompt's samples together).")


def _or_exit(metric: str, fn, *args, **kwargs):
  """``fn(*args, **kwargs)``, its OSError/ValueError turned into a SystemExit message."""
  try:
    return fn(*args, **kwargs)
  except (OSError, ValueError) as e:
    raise SystemExit(f"evaluate {metric}: {e}") from e


def _is_npz(path: str) -> bool:
  return os.path.isfile(path) and path.lower().endswith(".npz")


def _check_paths(args, metric: str, save_flag: str | None = None) -> None:
  """Exits with a message on a missing folder or a bad reference before the network is built."""
  if not os.path.isdir(args.samples):
    raise SystemExit(f"evaluate {metric}: samples folder {args.samples} does not exist.")
  if save_flag is not None:
    if not (os.path.isdir(args.reference) or _is_npz(args.reference)):
      raise SystemExit(f"evaluate {metric}: reference {args.reference} is neither a folder nor "
                       "an .npz file.")
    if _is_npz(args.reference) and getattr(args, save_flag.replace("-", "_")):
      raise SystemExit(f"evaluate {metric}: --{save_flag} needs a reference folder.")


def _clip_features(args) -> bool:
  return getattr(args, "features", "inception") == "clip"


def load_model(metric: str, inception_path: str | None, clip_path: str | None = None) -> Any:
  """The feature network of ``metric``: the FID Inception at ``inception_path``, or with
  ``clip_path`` instead, the image tower of that CLIP (``fid_clip``); a clear exit otherwise."""
  # pylint: disable=import-outside-toplevel
  from vqd_jax.evaluation import clip_features, inception
  if clip_path is None and not inception_path:
    raise SystemExit(f"evaluate {metric}: give --inception PATH ({WEIGHTS_HELP}), or "
                     "--features clip --clip DIR.")
  if clip_path is not None and inception_path:
    raise SystemExit(f"evaluate {metric}: --features clip measures CLIP features; drop "
                     "--inception (or measure the FID without --features clip).")
  try:
    if clip_path is not None:
      return clip_features.load_clip_features(clip_path)
    return inception.load_inception(inception_path)
  except (OSError, ValueError, ImportError) as e:  # missing, unreadable, not the FID Inception
    raise SystemExit(f"evaluate {metric}: {e}") from e


def _load_model(args, metric: str) -> Any:
  if _clip_features(args) != bool(getattr(args, "clip", None)):
    raise SystemExit(f"evaluate {metric}: --features clip and --clip DIR (a CLIP model folder or "
                     "a contrastive run) go together.")
  return load_model(metric, args.inception, args.clip if _clip_features(args) else None)


def unbiased_logits(model: Any, logits: np.ndarray) -> np.ndarray:
  """``[N, 1008]`` logits less the ``fc`` bias of ``model`` (an ``InceptionFeatures``): the logits
  of the original Inception Score code (``pool @ W``) that torch-fidelity also scores."""
  return np.asarray(logits, np.float64) - np.asarray(model.params["fc"]["bias"], np.float64)


def fid_of(pool: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """The Fréchet distance of features ``[N, D]`` to statistics ``mu2 [D]``, ``sigma2 [D, D]``."""
  from vqd_jax.evaluation import fid  # pylint: disable=import-outside-toplevel
  mu1, sigma1 = fid.statistics(pool)
  return fid.frechet_distance(mu1, sigma1, mu2, sigma2)


def kid_of(pool: np.ndarray, reference: np.ndarray, num_subsets: int, subset_size: int,
           seed: int) -> tuple[float, float, int]:
  """``(KID mean, std, subset size used)`` of features ``[N1, D]`` and ``[N2, D]``."""
  from vqd_jax.evaluation import fid  # pylint: disable=import-outside-toplevel
  size = fid.kid_subset_size(len(pool), len(reference), subset_size)
  mean, std = fid.kernel_inception_distance(pool, reference, num_subsets, size, seed)
  return mean, std, size


def is_of(model: Any, logits: np.ndarray, splits: int, seed: int | None) -> tuple[float, float]:
  """``(IS mean, std)`` over ``splits`` of ``[N, 1008]`` logits of ``model`` (bias removed;
  shuffled with ``seed`` unless None)."""
  from vqd_jax.evaluation import fid  # pylint: disable=import-outside-toplevel
  return fid.inception_score(unbiased_logits(model, logits), splits, shuffle_seed=seed)


def _features(args, folder: str, model: Any, metric: str, desc: str):
  from vqd_jax.evaluation import features  # pylint: disable=import-outside-toplevel
  return _or_exit(metric, features.folder_features, folder, model, args.batch_size,
                  progress=not args.no_progress, desc=desc)


def _describe(name: str, folder_features) -> dict[str, Any]:
  """Prints how many images of a folder were read and skipped; returns them for the report."""
  skipped = folder_features.skipped
  note = f", {len(skipped)} unreadable, skipped: {skipped[:5]}" if skipped else ""
  print(f"{name}: {len(folder_features.files)} images{note}")
  return {f"num_{name}": len(folder_features.files), f"{name}_skipped": skipped}


def _samples_and_reference(args, metric: str):
  """``(report, samples features, reference features or None for an .npz reference)``."""
  model = _load_model(args, metric)
  samples = _features(args, args.samples, model, metric, "samples")
  report = _describe("samples", samples)
  report["reference"] = os.path.abspath(args.reference)
  if _is_npz(args.reference):
    print(f"reference: {args.reference}")
    return report, samples, None
  reference = _features(args, args.reference, model, metric, "reference")
  report.update(_describe("reference", reference))
  return report, samples, reference


def _finish(args, report: dict[str, Any], default_name: str, last_lines: list[str]) -> int:
  if _clip_features(args):
    report.update(features="clip", clip=os.path.abspath(args.clip))
  else:
    report["inception"] = os.path.abspath(args.inception)
  report["samples"] = os.path.abspath(args.samples)
  output = args.output or os.path.join(args.samples, default_name)
  with open(output, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(f"report: {output}")
  for line in last_lines:
    print(line)
  return 0


def run_fid(args) -> int:
  from vqd_jax.evaluation import fid  # pylint: disable=import-outside-toplevel
  _check_paths(args, "fid", "save-reference-stats")
  if _is_npz(args.reference):  # read it first: a bad file fails before the network runs
    mu2, sigma2 = _or_exit("fid", fid.load_statistics, args.reference)
  report, samples, reference = _samples_and_reference(args, "fid")
  if reference is not None:
    mu2, sigma2 = _or_exit("fid", fid.statistics, reference.pool)
  if args.save_reference_stats:
    _or_exit("fid", fid.save_statistics, args.save_reference_stats, mu2, sigma2)
    print(f"reference statistics: {args.save_reference_stats}")
    report["reference_stats"] = os.path.abspath(args.save_reference_stats)
  value = _or_exit("fid", fid_of, samples.pool, mu2, sigma2)
  if _clip_features(args):
    from vqd_jax.evaluation import clip_features  # pylint: disable=import-outside-toplevel
    report.update(fid_clip=value, note=clip_features.note(args.clip))
    print(f"fid_clip: {report['note']}")
    return _finish(args, report, "fid_clip.json", [f"fid_clip {value:.4f}"])
  report["fid"] = value
  return _finish(args, report, "fid.json", [f"fid {value:.4f}"])


def run_kid(args) -> int:
  from vqd_jax.evaluation import fid  # pylint: disable=import-outside-toplevel
  _check_paths(args, "kid", "save-reference-features")
  if _is_npz(args.reference):
    features = _or_exit("kid", fid.load_features, args.reference)
  report, samples, reference = _samples_and_reference(args, "kid")
  if reference is not None:
    features = reference.pool
  mean, std, size = _or_exit("kid", kid_of, samples.pool, features, args.num_subsets,
                             args.subset_size, args.seed)
  if args.save_reference_features:
    _or_exit("kid", fid.save_features, args.save_reference_features, features)
    print(f"reference features: {args.save_reference_features}")
    report["reference_features"] = os.path.abspath(args.save_reference_features)
  report.update(kid=mean, kid_std=std, num_subsets=args.num_subsets, subset_size=size,
                seed=args.seed)
  return _finish(args, report, "kid.json", [
      f"kid std {std:.6f} ({args.num_subsets} subsets of {size})", f"kid {mean:.6f}"])


def run_is(args) -> int:
  _check_paths(args, "is")
  model = _load_model(args, "is")
  samples = _features(args, args.samples, model, "is", "samples")
  report = _describe("samples", samples)
  seed = None if args.no_shuffle else args.seed
  mean, std = _or_exit("is", is_of, model, samples.logits, args.splits, seed)
  report.update({"is": mean, "is_std": std, "splits": args.splits, "shuffle_seed": seed,
                 "logits": "fc without its bias, softmax over all 1008"})
  return _finish(args, report, "is.json", [f"is std {std:.4f} ({args.splits} splits)",
                                           f"is {mean:.4f}"])


RUNS = {"fid": run_fid, "kid": run_kid, "is": run_is}
