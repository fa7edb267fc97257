"""FID InceptionV3: our Flax port against pytorch-fid's PyTorch network with the same weights.

Nothing is downloaded: torchvision builds a random ``fid_inception_v3()`` state dict, pytorch-fid
builds its ``fid_inception_v3()`` and ``InceptionV3`` wrapper from it (``load_state_dict_from_url``
patched to return it), and one train-mode pass over the test images sets realistic BatchNorm
statistics so that the features are O(1). Images: CIFAR-10 JPEGs (32x32, upsampled) when
/work/shared/data is present, and generated 512x512 ones (downsampled, where antialiasing would
show).
"""

import glob
import sys

import jax
import numpy as np
import PIL.Image
import pytest
from safetensors.numpy import save_file

from pytorch_fid_reference import load_pytorch_fid
from vqd_jax import convert
from vqd_jax.evaluation import inception as ev
from vqd_jax.interop import inception as ii

CIFAR = "/work/shared/data/cifar10-test"
TOLERANCE = 1e-4
BATCH = 4


def cifar_images() -> np.ndarray | None:
  """uint8 ``[4, 32, 32, 3]``: the first JPEG of four classes, or None without the data."""
  files = sorted(glob.glob(f"{CIFAR}/*/0000.jpg"))[:BATCH]
  if len(files) < BATCH:
    return None
  return np.stack([np.asarray(PIL.Image.open(f).convert("RGB")) for f in files])


def large_images(side: int = 512) -> np.ndarray:
  """uint8 ``[4, side, side, 3]``: fine gratings, a checkerboard, smooth colour and noise."""
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:side, 0:side] / side
  grating = np.stack([np.sin(2 * np.pi * f * (x + 0.3 * y)) for f in (40, 90, 150)], -1)
  checker = ((np.indices((side, side)).sum(0) // 3) % 2)[..., None].repeat(3, -1) * 2.0 - 1.0
  smooth = np.stack([np.cos(3 * x), np.sin(5 * y), np.cos(4 * (x - y))], -1)
  noise = rng.uniform(-1, 1, (side, side, 3))
  images = np.stack([grating, checker, smooth + 0.3 * noise, noise])
  return np.round((images + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def _torch_input(torch, images: np.ndarray):
  return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def _randomised_state(torch, inception_mod) -> dict:
  """A random state dict in the ``fid_inception_v3()`` layout (BatchNorm statistics still unset).

  With zero-mean BatchNorm biases a random, calibrated BN-ReLU stack this deep amplifies float32
  rounding to ~1e-4 in the pool features (in PyTorch alone, against float64); biases around 1 keep
  most ReLUs open, rounding stays ~1e-5, and the 1e-4 tolerance measures the port, not the noise.
  """
  torch.manual_seed(0)
  model = inception_mod._inception_v3(  # pylint: disable=protected-access
      num_classes=1008, aux_logits=False, weights=None)
  state = model.state_dict()
  with torch.no_grad():
    for key, value in state.items():
      if key.endswith("bn.weight"):
        value.uniform_(0.5, 1.0)
      elif key.endswith("bn.bias"):
        value.normal_(1.0, 0.2)
  return state


def _calibrate(torch, net, batches: list[np.ndarray]) -> None:
  """Sets BatchNorm running statistics to those of the images (momentum None, one pass)."""
  for module in net.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.momentum = None
      module.reset_running_stats()
  x = torch.cat([torch.nn.functional.interpolate(_torch_input(torch, b), size=(299, 299),
                                                 mode="bilinear", align_corners=False)
                 for b in batches]) * 2 - 1
  net.train()
  with torch.no_grad():
    net(x)
  net.eval()


@pytest.fixture(scope="module")
def reference():
  """pytorch-fid's networks with calibrated random weights, and their outputs per image batch."""
  inception_mod, _ = load_pytorch_fid()
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  batches = {"large": large_images()}
  cifar = cifar_images()
  if cifar is not None:
    batches["cifar"] = cifar
  state = _randomised_state(torch, inception_mod)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(inception_mod, "load_state_dict_from_url", lambda *a, **k: state)
    fid_net = inception_mod.fid_inception_v3()
    _calibrate(torch, fid_net, list(batches.values()))
    state = {k: v.clone() for k, v in fid_net.state_dict().items()}
    wrapper = inception_mod.InceptionV3(output_blocks=[3], use_fid_inception=True).eval()
  outputs = {}
  with torch.no_grad():
    for name, images in batches.items():
      pool = wrapper(_torch_input(torch, images))[0].flatten(1)
      outputs[name] = (pool.numpy(), fid_net.fc(pool).numpy())
  return dict(torch=torch, state=state, wrapper=wrapper, batches=batches, outputs=outputs,
              flax=ev.InceptionFeatures(ii.inception_params(state)))


def _max_diff(ours: np.ndarray, theirs: np.ndarray, what: str) -> float:
  diff = float(np.max(np.abs(ours - theirs)))
  relative = diff / float(np.max(np.abs(theirs)))
  print(f"{what}: max |diff| {diff:.2e} (relative to max |ref| {relative:.2e}), "
        f"mean |ref| {float(np.mean(np.abs(theirs))):.3f}")
  return diff


def _check_features(features: ev.InceptionFeatures, ref: dict, name: str) -> None:
  pool, logits = features.features(ref["batches"][name])
  ref_pool, ref_logits = ref["outputs"][name]
  assert pool.shape == (BATCH, 2048) and logits.shape == (BATCH, 1008)
  assert pool.dtype == logits.dtype == np.float32
  assert _max_diff(pool, ref_pool, f"{name} pool") <= TOLERANCE
  assert _max_diff(logits, ref_logits, f"{name} logits") <= TOLERANCE


@pytest.mark.reference
@pytest.mark.parametrize("size", [(32, 32), (512, 512), (300, 200), (299, 299)])
def test_resize_matches_torch_interpolate(size):
  """Bilinear, half-pixel, no antialiasing: torch's F.interpolate default, up and down."""
  torch = pytest.importorskip("torch", reason="reference needs torch")
  x = np.random.default_rng(1).uniform(0, 1, (2, *size, 3)).astype(np.float32)
  theirs = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), (299, 299),
                                           mode="bilinear", align_corners=False)
  ours = np.asarray(ev.resize_bilinear(x, 299, 299))
  np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), atol=2e-6)


@pytest.mark.reference
def test_cifar_features_match_pytorch_fid(reference):
  if "cifar" not in reference["batches"]:
    pytest.skip(f"{CIFAR} is absent (CIFAR-10 test JPEGs)")
  _check_features(reference["flax"], reference, "cifar")


@pytest.mark.reference
def test_large_image_features_match_pytorch_fid(reference):
  _check_features(reference["flax"], reference, "large")


def _same_params(a, b) -> None:
  leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b))
  assert leaves and all(leaves)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)


@pytest.mark.reference
def test_pth_file_loads_to_the_same_features(reference, tmp_path):
  path = tmp_path / "pt_inception.pth"
  reference["torch"].save(reference["state"], path)
  loaded = ev.load_inception(path)
  _same_params(loaded.params, reference["flax"].params)
  _check_features(loaded, reference, "large")


@pytest.mark.reference
def test_convert_cli_round_trip(reference, tmp_path, capsys):
  src, dst = tmp_path / "pt_inception.pth", tmp_path / "out" / "inception.safetensors"
  reference["torch"].save(reference["state"], src)
  assert convert.main(["inception", str(src), str(dst)]) == 0
  assert str(dst) in capsys.readouterr().out
  loaded = ev.load_inception(dst)
  _same_params(loaded.params, reference["flax"].params)
  _check_features(loaded, reference, "cifar" if "cifar" in reference["batches"] else "large")


@pytest.mark.reference
def test_wrapper_state_dict_is_renamed_and_needs_fc(reference):
  wrapper_state = reference["wrapper"].state_dict()
  assert any(k.startswith("blocks.3.") for k in wrapper_state)
  with pytest.raises(ValueError, match="fc"):
    ii.inception_params(wrapper_state)
  fc = {k: v for k, v in reference["state"].items() if k.startswith("fc.")}
  _same_params(ii.inception_params({**wrapper_state, **fc}), reference["flax"].params)


def _zero_state() -> dict[str, np.ndarray]:
  return {k: np.zeros(s, np.float32) for k, s in ii.expected_state_dict_shapes().items()}


def _saved(path, state: dict[str, np.ndarray]):
  save_file(state, path)
  return path


def test_missing_key_names_file_and_key(tmp_path):
  state = _zero_state()
  del state["Mixed_6c.branch7x7dbl_4.bn.running_var"]
  with pytest.raises(ValueError, match=r"missing\.safetensors.*Mixed_6c\.branch7x7dbl_4\.bn"
                                        r"\.running_var.*Fix: pass the state dict"):
    ev.load_inception(_saved(tmp_path / "missing.safetensors", state))


def test_wrong_shape_names_file_and_shapes(tmp_path):
  state = {**_zero_state(), "fc.weight": np.zeros((1000, 2048), np.float32)}  # ImageNet's classes
  with pytest.raises(ValueError, match=r"wrong\.safetensors.*fc\.weight \(1000, 2048\) \(expected "
                                        r"\(1008, 2048\)\)"):
    ev.load_inception(_saved(tmp_path / "wrong.safetensors", state))


def test_missing_and_unreadable_files(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nowhere\.pth.*does not exist"):
    ev.load_inception(tmp_path / "nowhere.pth")
  with pytest.raises(FileNotFoundError, match="is a folder"):
    ev.load_inception(tmp_path)
  bad = tmp_path / "bad.safetensors"
  bad.write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match=r"bad\.safetensors"):
    ev.load_inception(bad)


def test_pth_without_torch_says_to_convert(tmp_path, monkeypatch):
  path = tmp_path / "weights.pth"
  path.write_bytes(b"\0")
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"weights\.pth.*python -m vqd_jax\.convert inception"):
    ev.load_inception(path)


@pytest.mark.reference
def test_unreadable_pth_and_cli_errors(tmp_path, capsys):
  pytest.importorskip("torch", reason="reading .pth files needs torch")
  bad = tmp_path / "bad.pth"
  bad.write_bytes(b"garbage")
  with pytest.raises(ValueError, match=r"bad\.pth.*weights_only"):
    ev.load_inception(bad)
  for argv in (["inception", str(bad), str(tmp_path / "x.safetensors")],
               ["inception", str(tmp_path / "absent.pth"), str(tmp_path / "x.safetensors")],
               ["inception", str(bad), str(tmp_path / "x.pth")]):
    with pytest.raises(SystemExit) as exit_info:
      convert.main(argv)
    assert exit_info.value.code not in (0, None)
    assert argv[1] in str(exit_info.value.code) or "x.pth" in str(exit_info.value.code)
  assert not (tmp_path / "x.safetensors").exists()


def test_bad_image_batches_are_refused():
  with pytest.raises(ValueError, match=r"\[batch, height, width, 3\]"):
    ev.check_images(np.zeros((2, 32, 32), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    ev.check_images(np.zeros((2, 32, 32, 3), np.int32))
