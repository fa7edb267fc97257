"""CLIP image tower + preprocessing: our Flax port against transformers'
CLIPVisionModelWithProjection, CLIPModel and CLIPImageProcessor (PIL backend), on real images.

Tiny random checkpoints are built offline in tmp dirs. Images: the project's shapes renderer
(always), a non-square picture made from them, and, when /work/shared/data is present, CIFAR-10
JPEGs and Noto emoji PNGs (RGBA and palette with transparency, composited onto white).
"""

import glob
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import pytest  # noqa: E402

from vqd_jax.data.shapes import generate_example  # noqa: E402
from vqd_jax.interop.clip_vision import load_clip_vision_encoder  # noqa: E402
from vqd_jax.text import CLIPImageEncoder, clip_preprocess  # noqa: E402
from vqd_jax.text.clip_vision import (CLIPVisionConfig, CLIPVisionEncoder,  # noqa: E402
                                      clip_vision_config_from_hf)

SHARED = "/work/shared/data"
TOWER = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4)
PROCESSOR = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}


def shapes_images():
  """uint8 images of three sizes, one of them non-square (two renders side by side, cut)."""
  small = [generate_example(0, i).image for i in range(3)]
  large = generate_example(1, 0, resolution=48).image
  wide = np.concatenate([generate_example(2, 0).image, generate_example(2, 1).image], 1)[:, :57]
  return small + [large, wide]


def shared_images():
  """CIFAR-10 JPEGs (PIL RGB, 32x32) and Noto emoji (72x72 PIL RGBA / P), when present."""
  files = sorted(glob.glob(f"{SHARED}/cifar10-test/*/0000.jpg"))[:3]
  emoji = sorted(glob.glob(f"{SHARED}/noto-emoji-72/images/*.png"))
  files += [emoji[i] for i in (0, 100, 101) if i < len(emoji)]  # RGBA and palette+transparency
  return [PIL.Image.open(f) for f in files]


def all_images():
  return shapes_images() + shared_images()


def _processor_class():
  transformers = pytest.importorskip("transformers", reason="reference needs transformers")
  # transformers >= 5: CLIPImageProcessor is the torchvision backend when torchvision is installed;
  # the PIL backend is the one this port follows (see vqd_jax.text.clip_preprocess).
  return getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)


def _hf_pixels(images, **kwargs):
  out = _processor_class()(**kwargs)(images, return_tensors="np")["pixel_values"]
  return np.asarray(out).transpose(0, 2, 3, 1)  # ours are channels-last


def _perturb_and_save(model, directory):
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():  # HF initialises LayerNorms to identity; perturb them so they are tested.
    for name, p in model.named_parameters():
      if "layer_norm" in name or "layrnorm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(str(directory))
  _processor_class()(**PROCESSOR).save_pretrained(str(directory))
  return model


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
  torch = pytest.importorskip("torch", reason="reference model needs PyTorch")
  transformers = pytest.importorskip("transformers", reason="reference model needs transformers")
  torch.manual_seed(0)
  config = transformers.CLIPVisionConfig(**TOWER, projection_dim=16, hidden_act="gelu")
  directory = tmp_path_factory.mktemp("clip_vision")
  model = transformers.CLIPVisionModelWithProjection(config).eval()
  return directory, _perturb_and_save(model, directory)


@pytest.fixture(scope="module")
def full_clip_dir(tmp_path_factory):
  torch = pytest.importorskip("torch", reason="reference model needs PyTorch")
  transformers = pytest.importorskip("transformers", reason="reference model needs transformers")
  torch.manual_seed(1)
  text = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
  # vision_config.projection_dim (16) is not what sizes visual_projection: the top-level one is.
  config = transformers.CLIPConfig(text_config=text, vision_config={**TOWER, "projection_dim": 16},
                                   projection_dim=12)
  directory = tmp_path_factory.mktemp("clip_full")
  model = transformers.CLIPModel(config).eval()
  return directory, _perturb_and_save(model, directory)


def _hf_outputs(model, pixels_nhwc):
  """(last_hidden_state [B, 1+P, D], image_embeds [B, E]) from the PyTorch model."""
  import torch  # pylint: disable=import-outside-toplevel
  pixels = torch.from_numpy(np.ascontiguousarray(pixels_nhwc.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    if hasattr(model, "visual_projection") and hasattr(model, "text_model"):  # full CLIPModel
      hidden = model.vision_model(pixel_values=pixels).last_hidden_state
      features = model.get_image_features(pixel_values=pixels)
      embeds = features if torch.is_tensor(features) else features.pooler_output
    else:
      out = model(pixel_values=pixels)
      hidden, embeds = out.last_hidden_state, out.image_embeds
  return hidden.numpy(), embeds.numpy()


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.reference
@pytest.mark.parametrize("settings", [
    PROCESSOR,
    {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}, "resample": 2},
    {"size": {"shortest_edge": 24}, "crop_size": {"height": 30, "width": 28}},  # crop pads
    {"size": {"height": 36, "width": 36}, "crop_size": {"height": 32, "width": 32},
     "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0]},
])
def test_preprocessing_matches_clip_image_processor(settings):
  images = all_images()
  ours = clip_preprocess(images, settings)
  assert ours.dtype == np.float32 and ours.shape[-1] == 3
  np.testing.assert_allclose(ours, _hf_pixels(images, **settings), atol=1e-4, rtol=0)


@pytest.mark.reference
def test_preprocessing_of_arrays_grey_and_rgba_matches():
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (45, 33, 4), np.uint8),
            rng.integers(0, 256, (31, 31, 1), np.uint8),
            PIL.Image.fromarray(rng.integers(0, 256, (20, 70), np.uint8))]  # grey PIL ("L")
  images += [np.asarray(im.convert("RGBA")) for im in shared_images()]  # RGBA arrays too
  np.testing.assert_allclose(clip_preprocess(images, PROCESSOR), _hf_pixels(images, **PROCESSOR),
                             atol=1e-4, rtol=0)
  batch = np.stack(shapes_images()[:3])
  np.testing.assert_allclose(clip_preprocess(batch), _hf_pixels(list(batch)), atol=1e-4, rtol=0)


@pytest.mark.reference
def test_preprocessor_config_is_read_from_the_folder(vision_dir):
  directory, _ = vision_dir
  saved = json.loads((directory / "preprocessor_config.json").read_text())
  assert saved["size"] == {"shortest_edge": 32}
  images = shapes_images()
  np.testing.assert_allclose(clip_preprocess(images, directory), _hf_pixels(images, **PROCESSOR),
                             atol=1e-4, rtol=0)
  # A folder without the file gives CLIP's defaults (224).
  assert clip_preprocess(images[:1], directory / "..").shape == (1, 224, 224, 3)


# ----------------------------------------------------------------------------- image tower


@pytest.mark.reference
@pytest.mark.parametrize("which", ["vision", "full"])
def test_tower_matches_transformers(which, vision_dir, full_clip_dir):
  directory, model = vision_dir if which == "vision" else full_clip_dir
  module, params = load_clip_vision_encoder(directory)
  assert module.config.projection_dim == (16 if which == "vision" else 12)
  images = all_images()
  pixels = clip_preprocess(images, directory)
  hidden, embeds = module.apply({"params": params}, jnp.asarray(pixels))
  ref_hidden, ref_embeds = _hf_outputs(model, _hf_pixels(images, **PROCESSOR))
  assert hidden.shape == (len(images), 17, 32) and embeds.shape == ref_embeds.shape
  np.testing.assert_allclose(hidden, ref_hidden, atol=1e-4, rtol=0)
  np.testing.assert_allclose(embeds, ref_embeds, atol=1e-4, rtol=0)
  # The wrapper: preprocessing included, any input size, uint8 batches or lists.
  encoder = CLIPImageEncoder.from_pretrained(directory)
  assert encoder.kind == "clip_image" and encoder.width == module.config.projection_dim
  np.testing.assert_allclose(encoder.encode_images(images), ref_embeds, atol=1e-4, rtol=0)
  batch = np.stack(shapes_images()[:3])
  got = encoder.encode_images(batch)
  assert got.dtype == np.float32 and got.shape == (3, encoder.width)
  np.testing.assert_allclose(got, _hf_outputs(model, _hf_pixels(list(batch), **PROCESSOR))[1],
                             atol=1e-4, rtol=0)


@pytest.mark.reference
def test_loads_pytorch_bin_with_hub_buffers(vision_dir, tmp_path):
  torch = pytest.importorskip("torch", reason="reference model needs PyTorch")
  directory, model = vision_dir
  for name in ("config.json", "preprocessor_config.json"):
    (tmp_path / name).write_text((directory / name).read_text())
  state = dict(model.state_dict())
  state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
  torch.save(state, tmp_path / "pytorch_model.bin")
  images = shapes_images()
  got = CLIPImageEncoder.from_pretrained(tmp_path).encode_images(images)
  np.testing.assert_allclose(got, _hf_outputs(model, _hf_pixels(images, **PROCESSOR))[1], atol=1e-4)


# ----------------------------------------------------------------------------- errors


@pytest.mark.reference
def test_bad_images_name_the_expected_layout(vision_dir):
  encoder = CLIPImageEncoder.from_pretrained(vision_dir[0])
  good = np.stack(shapes_images()[:2])
  for bad in (good.astype(np.float32), good[0], good[..., :1], np.zeros((2, 3, 32, 32), np.uint8)):
    with pytest.raises(ValueError, match=r"uint8 images \[batch, height, width, 3\]"):
      encoder.encode_images(bad)
  with pytest.raises(ValueError, match="empty"):
    encoder.encode_images([])
  with pytest.raises(ValueError, match="uint8"):
    clip_preprocess([good[0].astype(np.int64)])
  with pytest.raises(ValueError, match="channels-last"):
    clip_preprocess(good[:, :, :, :2])


@pytest.mark.reference
def test_checkpoint_errors(vision_dir, tmp_path):
  transformers = pytest.importorskip("transformers", reason="reference model needs transformers")
  directory, model = vision_dir
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_clip_vision_encoder(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_clip_vision_encoder(tmp_path)
  config = json.loads((directory / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    load_clip_vision_encoder(tmp_path)
  (tmp_path / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
  with pytest.raises(ValueError, match="layers_2"):
    load_clip_vision_encoder(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "clip_text_model"}))
  with pytest.raises(ValueError, match="clip_vision_model"):
    load_clip_vision_encoder(tmp_path)
  bare = tmp_path / "bare"  # a CLIPVisionModel has no projection to give image_embeds
  transformers.CLIPVisionModel(model.config).save_pretrained(str(bare))
  with pytest.raises(ValueError, match="visual_projection"):
    load_clip_vision_encoder(bare)
  (tmp_path / "config.json").write_text(json.dumps(config))
  (tmp_path / "preprocessor_config.json").write_text(json.dumps(
      {**PROCESSOR, "crop_size": {"height": 64, "width": 64}}))
  with pytest.raises(ValueError, match="crop_size"):
    CLIPImageEncoder.from_pretrained(tmp_path)


def test_config_reading_and_pixel_shape_errors():
  cfg = clip_vision_config_from_hf({"projection_dim": 8, "vision_config": {
      "hidden_size": 64, "num_attention_heads": 4, "patch_size": [16, 16], "projection_dim": 99}})
  assert (cfg.hidden_size, cfg.patch_size, cfg.projection_dim, cfg.image_size) == (64, 16, 8, 224)
  with pytest.raises(ValueError, match="hidden_act"):
    clip_vision_config_from_hf({"hidden_act": "mish"})
  with pytest.raises(ValueError, match="square"):
    clip_vision_config_from_hf({"image_size": [224, 160]})
  module = CLIPVisionEncoder(CLIPVisionConfig(**TOWER, projection_dim=4))
  with pytest.raises(ValueError, match=r"\[batch, 32, 32, 3\]"):
    module.init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)))
