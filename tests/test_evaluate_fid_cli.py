"""``python -m vqd_jax.evaluate fid | kid | is`` end to end on two small folders of images.

The Inception weights are random (pytorch-fid's torch network with He-scaled convs, saved as a
standard-layout ``.pth``), so the figures mean nothing; what is checked is the plumbing: folders
read and counted, the printed last lines, the JSON reports, and agreement with the library path
(``load_inception(...).features`` and the metrics of :mod:`vqd_jax.evaluation.fid`; the FID
through an exact low-rank formula, the 2048 x 2048 matrix square root being slow on a CPU).
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cli_coverage import covers
from test_fid_metrics import low_rank_fid
from vqd_jax import evaluate
from vqd_jax.evaluation import fid, inception_cli

SIDE = 32
NUM_IMAGES = 6  # per folder: one Inception batch, one compiled shape


def write_images(folder, seed, brightness, samples_jsonl=False):
  """``NUM_IMAGES`` 32x32 PNGs (smooth colour plus noise) in ``folder``; their uint8 arrays."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
  images = []
  for i in range(NUM_IMAGES):
    base = np.stack([np.sin(3 * x + i), np.cos(2 * y - i), x * y], -1) * 60 + brightness
    image = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(folder / f"{i:02d}.png")
    images.append(image)
  if samples_jsonl:
    (folder / "samples.jsonl").write_text("".join(
        json.dumps({"file": f"{i:02d}.png", "prompt": "p"}) + "\n" for i in range(NUM_IMAGES)))
  return np.stack(images)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  return write_random_inception(tmp_path_factory.mktemp("inception") / "fid_inception_random.pth")


def write_random_inception(path):
  """A random-weight FID Inception state dict in the standard layout, saved with torch.save to
  ``path``; returns ``str(path)``."""
  from pytorch_fid_reference import load_pytorch_fid  # pylint: disable=import-outside-toplevel
  inception_mod, _ = load_pytorch_fid()
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = inception_mod._inception_v3(num_classes=1008, aux_logits=False, weights=None)  # pylint: disable=protected-access
  state = model.state_dict()
  with torch.no_grad():
    for key, value in state.items():
      if key.endswith("conv.weight"):  # He scaling keeps activations O(1) through the depth
        value.normal_(0.0, (2.0 / value[0].numel()) ** 0.5)
      elif key == "fc.bias":
        value.normal_(0.0, 1.0)
  torch.save(state, path)
  return str(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """Reference folder ``a`` (a samples folder with samples.jsonl) and samples folder ``b`` (plain,
  with one corrupt PNG); their images."""
  root = tmp_path_factory.mktemp("fid_cli")
  a_images = write_images(root / "a", seed=0, brightness=100, samples_jsonl=True)
  b_images = write_images(root / "b", seed=1, brightness=140)
  (root / "b" / "03_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  return root, a_images, b_images


@pytest.fixture(scope="module")
def library(weights, folders):
  """The library path, independent of the command line: ``load_inception(...).features`` of
  both folders' images."""
  from vqd_jax.evaluation.inception import load_inception  # pylint: disable=import-outside-toplevel
  _, a_images, b_images = folders
  model = load_inception(weights)
  (a_pool, _), (b_pool, b_logits) = model.features(a_images), model.features(b_images)
  return dict(model=model, a_pool=a_pool, b_pool=b_pool, b_logits=b_logits)


def run(argv, capsys):
  """``evaluate.main(argv + batch flags)`` -> its printed lines."""
  assert evaluate.main([*argv, "--batch-size", str(NUM_IMAGES), "--no-progress"]) == 0
  return capsys.readouterr().out.strip().splitlines()


@pytest.mark.reference
@covers("evaluate fid --samples", "evaluate fid --reference", "evaluate fid --inception",
        "evaluate fid --save-reference-stats", "evaluate fid --output")
def test_fid_of_two_folders_and_of_a_folder_with_its_saved_statistics(weights, folders, library,
                                                                       capsys):
  root = folders[0]
  stats_file = root / "a_stats.npz"
  lines = run(["fid", "--samples", str(root / "b"), "--reference", str(root / "a"),
               "--save-reference-stats", str(stats_file), "--inception", weights], capsys)
  report = json.loads((root / "b" / "fid.json").read_text())
  assert lines[-1] == f"fid {report['fid']:.4f}" and report["fid"] > 0
  assert report["num_samples"] == NUM_IMAGES and report["samples_skipped"] == ["03_broken.png"]
  assert report["num_reference"] == NUM_IMAGES and report["reference_skipped"] == []
  assert report["inception"] == weights and "1 unreadable" in lines[0]
  # 6 features in 2048 dimensions: the exact FID through the 6 x 6 cross product, no sqrtm.
  expected = low_rank_fid(library["b_pool"], library["a_pool"])
  assert report["fid"] == pytest.approx(expected, rel=1e-5)
  mu, sigma = fid.load_statistics(stats_file)
  np.testing.assert_allclose(mu, library["a_pool"].mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sigma, np.cov(library["a_pool"].astype(np.float64), rowvar=False),
                             rtol=1e-4, atol=1e-6)

  # A folder against its own saved statistics: 0 up to the square root's rounding.
  lines = run(["fid", "--samples", str(root / "a"), "--reference", str(stats_file), "--output",
               str(root / "self.json"), "--inception", weights], capsys)
  value = json.loads((root / "self.json").read_text())["fid"]
  assert abs(value) < 1e-3 * report["fid"] and lines[-1] == f"fid {value:.4f}"


@pytest.mark.reference
@covers("evaluate kid --samples", "evaluate kid --reference", "evaluate kid --inception",
        "evaluate kid --num-subsets", "evaluate kid --subset-size", "evaluate kid --seed")
def test_kid_of_two_folders(weights, folders, library, capsys):
  root = folders[0]
  lines = run(["kid", "--samples", str(root / "b"), "--reference", str(root / "a"),
               "--num-subsets", "5", "--subset-size", "4", "--seed", "3", "--inception", weights],
              capsys)
  kid = json.loads((root / "b" / "kid.json").read_text())
  assert lines[-1] == f"kid {kid['kid']:.6f}" and lines[-2].startswith("kid std ")
  expected = fid.kernel_inception_distance(library["b_pool"], library["a_pool"], 5, 4, seed=3)
  assert (kid["kid"], kid["kid_std"]) == pytest.approx(expected, rel=1e-5)
  assert kid["subset_size"] == 4 and kid["num_samples"] == kid["num_reference"] == NUM_IMAGES
  assert kid["samples_skipped"] == ["03_broken.png"] and kid["inception"] == weights


@pytest.mark.reference
@covers("evaluate is --samples", "evaluate is --inception", "evaluate is --splits")
def test_inception_score_of_a_folder(weights, folders, library, capsys):
  root = folders[0]
  lines = run(["is", "--samples", str(root / "b"), "--splits", "2", "--inception", weights],
              capsys)
  score = json.loads((root / "b" / "is.json").read_text())
  assert lines[-1] == f"is {score['is']:.4f}" and lines[-2].startswith("is std ")
  unbiased = library["b_logits"] - np.asarray(library["model"].params["fc"]["bias"])
  expected = fid.inception_score(unbiased, 2, shuffle_seed=2020)
  assert (score["is"], score["is_std"]) == pytest.approx(expected, rel=1e-5)
  assert score["samples_skipped"] == ["03_broken.png"] and score["num_samples"] == NUM_IMAGES


def test_bad_inputs_exit_with_a_message(tmp_path):
  write_images(tmp_path / "imgs", seed=0, brightness=100)
  (tmp_path / "empty").mkdir()
  np.savez(tmp_path / "no_mu.npz", sigma=np.eye(2))
  imgs, weights = str(tmp_path / "imgs"), str(tmp_path / "missing.pth")
  cases = [
      (["fid", "--samples", str(tmp_path / "nope"), "--reference", imgs, "--inception", weights],
       "samples folder .*nope does not exist"),
      (["fid", "--samples", imgs, "--reference", str(tmp_path / "nope.npz"), "--inception",
        weights], "neither a folder nor an .npz"),
      (["fid", "--samples", imgs, "--reference", str(tmp_path / "no_mu.npz"), "--inception",
        weights], "lacks 'mu'"),
      (["fid", "--samples", imgs, "--reference", str(tmp_path / "no_mu.npz"), "--inception",
        weights, "--save-reference-stats", "x.npz"], "needs a reference folder"),
      (["kid", "--samples", imgs, "--reference", str(tmp_path / "no_mu.npz"), "--inception",
        weights], "lacks 'features'"),
      (["is", "--samples", imgs, "--inception", weights], "missing.pth.* does not exist"),
      (["is", "--samples", imgs, "--inception", str(tmp_path / "empty")], "is a folder"),
  ]
  for argv, message in cases:
    with pytest.raises(SystemExit, match=message):
      evaluate.main(argv)


def test_empty_folder_and_unreadable_weights_exit_with_a_message(tmp_path, monkeypatch):
  (tmp_path / "empty").mkdir()
  (tmp_path / "junk.safetensors").write_bytes(b"not weights")
  with pytest.raises(SystemExit, match="Cannot read .*junk.safetensors"):
    evaluate.main(["is", "--samples", str(tmp_path / "empty"), "--inception",
                   str(tmp_path / "junk.safetensors")])
  monkeypatch.setattr(inception_cli, "_load_model", lambda args, metric: object())
  with pytest.raises(SystemExit, match="empty holds no images"):
    evaluate.main(["is", "--samples", str(tmp_path / "empty"), "--inception", "w.pth"])


def test_help_explains_every_flag():
  for metric, flags in (("fid", ["--samples", "--reference", "--inception", "--batch-size",
                                 "--output", "--save-reference-stats", "--no-progress"]),
                        ("kid", ["--num-subsets", "--subset-size", "--seed",
                                 "--save-reference-features"]),
                        ("is", ["--splits", "--inception"])):
    out = subprocess.run([sys.executable, "-m", "vqd_jax.evaluate", metric, "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in flags:
      assert flag in out, (metric, flag)
    assert out.count("(default") >= 1
