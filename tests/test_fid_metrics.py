"""FID, KID and Inception Score math (vqd_jax.evaluation.fid) and the folder reader."""

import numpy as np
import pytest
from PIL import Image

from pytorch_fid_reference import load_pytorch_fid
from vqd_jax.evaluation import features, fid


def random_statistics(rng, d, n=None):
  """``(mu [d], sigma [d, d])`` of ``n`` random correlated features (``sigma`` SPD if n > d)."""
  x = rng.normal(size=(n or 3 * d, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
  return fid.statistics(x)


@pytest.mark.reference
def test_frechet_distance_matches_pytorch_fid():
  _, fid_score = load_pytorch_fid()
  rng = np.random.default_rng(0)
  for d, n in ((8, None), (64, None), (64, 40)):  # the last: rank-deficient covariances
    mu1, sigma1 = random_statistics(rng, d, n)
    mu2, sigma2 = random_statistics(rng, d, n)
    ours = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
    theirs = fid_score.calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-8)
  nilpotent = np.array([[0.0, 1.0], [0.0, 0.0]])  # both take the eps path
  with pytest.warns(RuntimeWarning, match="singular"):
    ours = fid.frechet_distance(np.zeros(2), nilpotent, np.ones(2), np.eye(2))
  theirs = fid_score.calculate_frechet_distance(np.zeros(2), nilpotent, np.ones(2), np.eye(2))
  np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
  s1, s2 = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
  got = fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  assert got == pytest.approx(expected, rel=1e-10)
  # Commuting, non-diagonal: the same spectra in one rotated basis.
  q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
  got = fid.frechet_distance(mu1, q @ np.diag(s1) @ q.T, mu2, q @ np.diag(s2) @ q.T)
  assert got == pytest.approx(expected, rel=1e-8)
  assert fid.frechet_distance(1.0, 4.0, 3.0, 9.0) == pytest.approx(4.0 + 1.0)  # 1-D


def test_frechet_distance_of_a_set_with_itself_and_with_noise():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(200, 32)) @ rng.normal(size=(32, 32))
  stats = fid.statistics(x)
  assert abs(fid.frechet_distance(*stats, *stats)) < 1e-6
  noise = rng.normal(size=x.shape)
  values = [fid.frechet_distance(*stats, *fid.statistics(x + s * noise))
            for s in (0.1, 0.5, 1.0, 2.0, 4.0)]
  assert all(a < b for a, b in zip(values, values[1:])), values
  assert values[0] > 0


def low_rank_fid(x1, x2):
  """FID of feature sets ``[n1, D]`` and ``[n2, D]`` without a matrix square root.

  With centred ``c1``, ``c2``, ``sigma1 sigma2 = c1^T (c1 c2^T) c2 / k`` (``k = (n1-1)(n2-1)``) has
  the nonzero eigenvalues of ``M M^T / k``, ``M = c1 c2^T``: ``tr sqrt(sigma1 sigma2)`` is the sum
  of ``M``'s singular values over ``sqrt(k)``.
  """
  x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
  c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
  k1, k2 = len(x1) - 1, len(x2) - 1
  diff = x1.mean(0) - x2.mean(0)
  nuclear = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum()
  return diff @ diff + np.sum(c1**2) / k1 + np.sum(c2**2) / k2 - 2 * nuclear / np.sqrt(k1 * k2)


def test_frechet_distance_of_rank_deficient_statistics():
  rng = np.random.default_rng(9)
  x1, x2 = rng.normal(size=(10, 64)), rng.normal(0.5, 2.0, size=(7, 64))
  got = fid.frechet_distance(*fid.statistics(x1), *fid.statistics(x2))
  assert got == pytest.approx(low_rank_fid(x1, x2), rel=1e-7)  # sqrtm of a singular product


def test_frechet_distance_singular_product_and_bad_shapes():
  nilpotent = np.array([[0.0, 1.0], [0.0, 0.0]])  # sqrtm(nilpotent @ I) is not finite
  with pytest.warns(RuntimeWarning, match="singular"):
    assert np.isfinite(fid.frechet_distance(np.zeros(2), nilpotent, np.ones(2), np.eye(2)))
  zeros = np.zeros((4, 4))
  assert fid.frechet_distance(np.zeros(4), zeros, np.ones(4), zeros) == pytest.approx(4.0)
  with pytest.raises(ValueError, match="different dimensions"):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="mu must be"):
    fid.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match="at least 2"):
    fid.statistics(np.ones((1, 4)))


def test_statistics_are_float64_mean_and_unbiased_covariance():
  x = np.random.default_rng(3).normal(size=(50, 6)).astype(np.float32)
  mu, sigma = fid.statistics(x)
  assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (6, 6)
  centred = x.astype(np.float64) - x.astype(np.float64).mean(0)
  np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)


def test_statistics_files_interchange_with_pytorch_fids_format(tmp_path):
  rng = np.random.default_rng(4)
  mu, sigma = random_statistics(rng, 5)
  theirs = tmp_path / "theirs.npz"
  np.savez(theirs, mu=mu, sigma=sigma)  # how pytorch-fid writes (savez or savez_compressed)
  loaded = fid.load_statistics(theirs)
  np.testing.assert_array_equal(loaded[0], mu)
  np.testing.assert_array_equal(loaded[1], sigma)
  ours = tmp_path / "ours.npz"
  fid.save_statistics(ours, mu, sigma)
  with np.load(ours) as f:  # how pytorch-fid reads
    np.testing.assert_array_equal(f["mu"][:], mu)
    np.testing.assert_array_equal(f["sigma"][:], sigma)


def test_statistics_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    fid.load_statistics(tmp_path / "none.npz")
  np.savez(tmp_path / "no_mu.npz", sigma=np.eye(2))
  with pytest.raises(ValueError, match="lacks 'mu'"):
    fid.load_statistics(tmp_path / "no_mu.npz")
  np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.eye(2))
  with pytest.raises(ValueError, match="mu must be"):
    fid.load_statistics(tmp_path / "shape.npz")
  (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
  with pytest.raises(ValueError, match="not a readable .npz"):
    fid.load_statistics(tmp_path / "junk.npz")
  np.save(tmp_path / "single.npy", np.zeros(3))
  with pytest.raises(ValueError, match="single array"):
    fid.load_statistics(tmp_path / "single.npy")
  fid.save_features(tmp_path / "f.npz", np.ones((3, 2), np.float32))
  assert fid.load_features(tmp_path / "f.npz").shape == (3, 2)
  with pytest.raises(ValueError, match="lacks 'features'"):
    fid.load_features(tmp_path / "shape.npz")


def brute_force_mmd2(x, y):
  """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, summed term by term in float64."""
  m, d = x.shape
  k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3  # noqa: E731
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
  return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (m * m)


def test_kid_matches_a_brute_force_reference_on_the_same_subsets():
  rng = np.random.default_rng(5)
  f1 = rng.normal(size=(30, 8))
  f2 = rng.normal(0.3, 1.2, size=(25, 8))
  mean, std = fid.kernel_inception_distance(f1, f2, num_subsets=7, subset_size=10, seed=11)
  mmds = [brute_force_mmd2(f1[i], f2[j]) for i, j in fid.kid_subsets(30, 25, 7, 10, seed=11)]
  assert mean == pytest.approx(np.mean(mmds), rel=1e-10)
  assert std == pytest.approx(np.std(mmds), rel=1e-8)
  assert mean > 0


def test_kid_on_whole_sets_clips_the_subset_size_and_is_unbiased():
  rng = np.random.default_rng(6)
  f1, f2 = rng.normal(size=(12, 5)), rng.normal(size=(9, 5))
  with pytest.warns(UserWarning, match="using subsets of 9"):
    mean, std = fid.kernel_inception_distance(f1[:9], f2, num_subsets=3, subset_size=50)
  # Subsets of the whole set are permutations of it: every subset gives the same MMD^2.
  assert mean == pytest.approx(brute_force_mmd2(f1[:9], f2), rel=1e-10) and std < 1e-12
  # Two samples of one distribution: unbiased, so near 0 and of either sign.
  big = rng.normal(size=(2000, 16))
  assert abs(fid.kernel_inception_distance(big[:1000], big[1000:], 20, 200)[0]) < 0.05
  with pytest.raises(ValueError, match="at least 2"):
    fid.kernel_inception_distance(f1[:1], f2)


def test_inception_score_closed_forms():
  # Confident, one class per sample, C classes equally often: p(y) uniform -> IS = C.
  classes = 7
  logits = np.full((70, 1008), -1e4)
  logits[np.arange(70), np.arange(70) % classes] = 0.0
  mean, std = fid.inception_score(logits, num_splits=10)
  assert mean == pytest.approx(classes, rel=1e-9) and std < 1e-9
  # Identical rows: p(y|x) = p(y) -> IS = 1.
  same = np.tile(np.random.default_rng(7).normal(size=1008), (20, 1))
  assert fid.inception_score(same, num_splits=4) == pytest.approx((1.0, 0.0), abs=1e-9)


def test_inception_score_against_a_direct_formula():
  rng = np.random.default_rng(8)
  logits = rng.normal(scale=3.0, size=(40, 12))
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  expected = []
  for part in np.split(p, 4):
    py = part.mean(0)
    expected.append(np.exp(np.mean([np.sum(row * np.log(row / py)) for row in part])))
  assert fid.inception_score(logits, 4) == pytest.approx((np.mean(expected), np.std(expected)))
  # Shuffled: the same splits of the rows in torch-fidelity's permutation.
  shuffled = logits[np.random.RandomState(2020).permutation(40)]
  assert fid.inception_score(logits, 4, shuffle_seed=2020) == fid.inception_score(shuffled, 4)
  with pytest.raises(ValueError, match="num_splits"):
    fid.inception_score(logits, 41)


class MeanColourModel:
  """Stands in for the Inception network: pool = per-channel means, logits = pixel sums."""

  def __init__(self):
    self.shapes = []

  def features(self, images):
    self.shapes.append(images.shape)
    pool = np.repeat(images.mean(axis=(1, 2)), 2048 // 3 + 1, axis=1)[:, :2048]
    return pool.astype(np.float32), np.tile(images.sum(axis=(1, 2, 3))[:, None], (1, 1008))


def test_folder_features_groups_sizes_skips_unreadable_and_keeps_file_order(tmp_path):
  colours = {"a.png": (10, 8), "b/c.jpg": (20, 8), "b/d.webp": (30, 16), "e.bmp": (40, 8),
             "f.png": (50, 16), "g.PNG": (60, 8)}
  for name, (value, size) in colours.items():
    (tmp_path / name).parent.mkdir(exist_ok=True)
    image = Image.new("L" if name == "g.PNG" else "RGB", (size, size), value)
    image.save(tmp_path / name, quality=100)
  (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
  (tmp_path / "notes.txt").write_text("not an image")
  model = MeanColourModel()
  out = features.folder_features(tmp_path, model, batch_size=2, progress=False)
  assert out.files == ["a.png", "b/c.jpg", "b/d.webp", "e.bmp", "f.png", "g.PNG"]
  assert out.skipped == ["broken.png"]
  np.testing.assert_allclose(out.pool[:, 0], [10, 20, 30, 40, 50, 60], atol=1.0)
  assert out.pool.shape == (6, 2048) and out.logits.shape == (6, 1008)
  # One size per batch, every batch padded to the batch size.
  assert sorted(model.shapes) == [(2, 8, 8, 3)] * 2 + [(2, 16, 16, 3)]


def test_folder_features_reads_a_samples_folder_and_fails_clearly(tmp_path):
  for i in range(3):
    Image.new("RGB", (4, 4), (i, i, i)).save(tmp_path / f"{i}.png")
  (tmp_path / "samples.jsonl").write_text(
      '{"file": "2.png", "prompt": "x"}\n{"file": "0.png", "prompt": "y"}\n'
      '{"file": "gone.png", "prompt": "z"}\n')
  model = MeanColourModel()
  out = features.folder_features(tmp_path, model, batch_size=8, progress=False)
  assert out.files == ["2.png", "0.png"] and out.skipped == ["gone.png"]
  assert model.shapes == [(3, 4, 4, 3)]  # padded to the number of files listed
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    features.folder_features(tmp_path / "missing", MeanColourModel())
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="holds no images"):
    features.folder_features(tmp_path / "empty", MeanColourModel())
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "x.png").write_bytes(b"nope")
  with pytest.raises(ValueError, match="None of the 1 images"):
    features.folder_features(tmp_path / "bad", MeanColourModel())
