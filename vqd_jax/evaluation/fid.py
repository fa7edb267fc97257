"""Fréchet Inception Distance, Kernel Inception Distance and Inception Score from features.

Pure numpy/scipy, float64 throughout. The features come from the FID InceptionV3
(:mod:`vqd_jax.evaluation.inception`): its 2048-dimensional pool features for FID and KID, its
1008-way logits for the Inception Score; :mod:`vqd_jax.evaluation.features` reads image folders
into them.

* FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to two feature sets,
  ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2))``, the square root computed as pytorch-fid and
  TTUR compute it (scipy's ``sqrtm``; ``eps`` on the diagonals if the product is singular; a
  small imaginary part from rounding dropped, a large one an error).
* KID (Bińkowski et al. 2018): the unbiased MMD^2 under the kernel ``(x.y / d + 1)^3``, averaged
  over random subsets of both sets (torch-fidelity's and clean-fid's estimator).
* IS (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` per split of the samples.

Statistics files are ``.npz`` archives with arrays ``mu`` ``[D]`` and ``sigma`` ``[D, D]``,
pytorch-fid's format: files written by either tool load in the other.
"""

from __future__ import annotations

import os
import warnings
import zipfile

import numpy as np
from scipy import linalg, special

STATISTICS_KEYS = ("mu", "sigma")
FEATURES_KEY = "features"


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean ``[D]`` and covariance ``[D, D]`` (float64, normalised by ``N - 1``) of ``[N, D]``."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2:
    raise ValueError(f"Features must be [N, D]; got shape {features.shape}.")
  if features.shape[0] < 2:
    raise ValueError(f"A covariance needs at least 2 feature vectors; got {features.shape[0]}.")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _check_statistics(mu, sigma, what: str) -> tuple[np.ndarray, np.ndarray]:
  mu = np.atleast_1d(np.asarray(mu, np.float64))
  sigma = np.atleast_2d(np.asarray(sigma, np.float64))
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"{what}: mu must be [D] and sigma [D, D]; got {mu.shape} and {sigma.shape}.")
  return mu, sigma


def _sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> np.ndarray:
  """``sqrtm(sigma1 @ sigma2)`` ``[D, D]``, with ``eps`` added to both diagonals if that fails."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    root = linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(root).all():
    warnings.warn(f"FID: sigma1 @ sigma2 is singular; adding {eps} to both covariance diagonals.",
                  RuntimeWarning, stacklevel=3)
    offset = eps * np.eye(sigma1.shape[0])
    root = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(root):
    imaginary = np.abs(np.diagonal(root).imag).max()
    if imaginary > 1e-3:  # rounding leaves a tiny imaginary part; more means a broken input
      raise ValueError(f"FID: the matrix square root has an imaginary component of {imaginary:g} "
                       "on its diagonal; are both covariances symmetric positive semidefinite?")
    root = root.real
  return root


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (``mu`` ``[D]``,
  ``sigma`` ``[D, D]``), in float64:
  ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2))``.
  """
  mu1, sigma1 = _check_statistics(mu1, sigma1, "first statistics")
  mu2, sigma2 = _check_statistics(mu2, sigma2, "second statistics")
  if mu1.shape != mu2.shape:
    raise ValueError(f"The statistics have different dimensions: {mu1.shape[0]} and "
                     f"{mu2.shape[0]}.")
  diff = mu1 - mu2
  root = _sqrt_product(sigma1, sigma2, eps)
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root))


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
  """Writes ``mu`` ``[D]`` and ``sigma`` ``[D, D]`` to an ``.npz`` in pytorch-fid's format."""
  mu, sigma = _check_statistics(mu, sigma, os.fspath(path))
  np.savez_compressed(path, mu=mu, sigma=sigma)


def _open_npz(path: str | os.PathLike, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
  """The arrays ``keys`` of an ``.npz``; a clear error if it is missing, unreadable or lacks one."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist.")
  unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile)
  try:
    archive = np.load(path, allow_pickle=False)
  except unreadable as e:
    raise ValueError(f"{path} is not a readable .npz archive: {e}") from e
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise ValueError(f"{path} holds a single array, not an .npz archive with "
                     f"{' and '.join(repr(k) for k in keys)}.")
  with archive:
    missing = [k for k in keys if k not in archive.files]
    if missing:
      raise ValueError(f"{path} lacks {' and '.join(repr(k) for k in missing)} (it holds "
                       f"{archive.files}); expected {' and '.join(repr(k) for k in keys)}.")
    try:
      return {k: archive[k] for k in keys}
    except unreadable as e:
      raise ValueError(f"{path} is not a readable .npz archive: {e}") from e


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """``(mu [D], sigma [D, D])`` float64 from an ``.npz`` with arrays ``mu`` and ``sigma``."""
  arrays = _open_npz(path, STATISTICS_KEYS)
  return _check_statistics(arrays["mu"], arrays["sigma"], os.fspath(path))


def save_features(path: str | os.PathLike, features: np.ndarray) -> None:
  """Writes features ``[N, D]`` to an ``.npz`` under the key ``features`` (for KID references)."""
  features = np.asarray(features)
  if features.ndim != 2:
    raise ValueError(f"Features must be [N, D]; got shape {features.shape}.")
  np.savez_compressed(path, **{FEATURES_KEY: features})


def load_features(path: str | os.PathLike) -> np.ndarray:
  """Features ``[N, D]`` float64 from an ``.npz`` written by :func:`save_features`."""
  features = np.asarray(_open_npz(path, (FEATURES_KEY,))[FEATURES_KEY], np.float64)
  if features.ndim != 2:
    raise ValueError(f"{os.fspath(path)}: features must be [N, D]; got shape {features.shape}.")
  return features


def kid_subset_size(n1: int, n2: int, subset_size: int) -> int:
  """``subset_size`` clipped to the smaller set (with a warning); at least 2 are needed."""
  size = min(subset_size, n1, n2)
  if size < 2:
    raise ValueError(f"KID needs at least 2 feature vectors in each set; got {n1} and {n2}.")
  if size < subset_size:
    warnings.warn(f"KID: subset size {subset_size} is more than the smaller set holds "
                  f"({min(n1, n2)}); using subsets of {size}.", UserWarning, stacklevel=2)
  return size


def kid_subsets(n1: int, n2: int, num_subsets: int, size: int, seed: int):
  """Yields ``num_subsets`` pairs of index arrays ``([size] into set 1, [size] into set 2)``,
  each drawn without replacement, from ``np.random.default_rng(seed)``."""
  rng = np.random.default_rng(seed)
  for _ in range(num_subsets):
    yield rng.choice(n1, size, replace=False), rng.choice(n2, size, replace=False)


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of ``x`` and ``y`` (both ``[m, D]``) under ``k(a, b) = (a.b / D + 1)^3``.

  The within-set kernel sums leave out the diagonal (``m (m - 1)`` terms); the cross sum keeps
  all ``m^2`` terms, as in the KID paper.
  """
  m, d = x.shape
  k_xx = (x @ x.T / d + 1.0) ** 3
  k_yy = (y @ y.T / d + 1.0) ** 3
  k_xy = (x @ y.T / d + 1.0) ** 3
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray,
                              num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
  """KID of features ``[N1, D]`` and ``[N2, D]``: mean and standard deviation (``ddof=0``) of
  :func:`polynomial_mmd2` over ``num_subsets`` random subset pairs of ``subset_size`` each
  (clipped to the smaller set by :func:`kid_subset_size`; :func:`kid_subsets` draws them)."""
  f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
    raise ValueError(f"KID needs two [N, D] feature sets of one D; got {f1.shape} and {f2.shape}.")
  if num_subsets < 1:
    raise ValueError(f"num_subsets must be at least 1; got {num_subsets}.")
  size = kid_subset_size(len(f1), len(f2), subset_size)
  mmds = [polynomial_mmd2(f1[i], f2[j])
          for i, j in kid_subsets(len(f1), len(f2), num_subsets, size, seed)]
  return float(np.mean(mmds)), float(np.std(mmds))


def inception_score(logits: np.ndarray, num_splits: int = 10,
                    shuffle_seed: int | None = None) -> tuple[float, float]:
  """Inception Score of logits ``[N, C]``: mean and standard deviation (``ddof=0``) over splits.

  ``p(y|x)`` is the softmax over all ``C`` logits: for the standard figure, all 1008 of the FID
  Inception, the unused classes included, and without the ``fc`` bias (``pool @ W``), as the
  original OpenAI/TTUR code and torch-fidelity's ``logits_unbiased`` take them
  (:func:`vqd_jax.evaluation.inception_cli.unbiased_logits`). The rows are split into
  ``num_splits`` contiguous parts (``[i N // s, (i + 1) N // s)``), in the given order when
  ``shuffle_seed`` is None (the original code), else after the permutation
  ``np.random.RandomState(shuffle_seed).permutation(N)`` (torch-fidelity's, whose seed is 2020).
  Each part scores ``exp(mean_x KL(p(y|x) || p(y)))`` with ``p(y)`` the part's mean ``p(y|x)``.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2:
    raise ValueError(f"Logits must be [N, C]; got shape {logits.shape}.")
  n = len(logits)
  if not 1 <= num_splits <= n:
    raise ValueError(f"num_splits must be between 1 and the number of samples ({n}); got "
                     f"{num_splits}.")
  if shuffle_seed is not None:
    logits = logits[np.random.RandomState(shuffle_seed).permutation(n)]
  log_p = special.log_softmax(logits, axis=1)
  scores = []
  for i in range(num_splits):
    part = log_p[i * n // num_splits:(i + 1) * n // num_splits]
    # log p(y), in logs: a class no sample of the part predicts must not give 0 * log 0.
    log_marginal = special.logsumexp(part, axis=0) - np.log(len(part))
    kl = (np.exp(part) * (part - log_marginal)).sum(axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))
