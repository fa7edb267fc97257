"""A denoiser conditioned on precomputed embeddings, as users run it: tiny random T5, CLIP text and
CLIP image encoders in the transformers layout -> ``python -m vqd_jax.encode`` stores their outputs
in the token records -> training (resumes exactly) -> the pipeline and ``python -m vqd_jax.sample``
with each subset of sources. The frozen CLIP text source is checked against transformers' PyTorch
model (the T5 and image towers in their own reference tests)."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cli_coverage import covers  # noqa: E402
from test_clip_text import write_tiny_clip_tokenizer  # noqa: E402
from test_clip_vision_vs_transformers import PROCESSOR, TOWER  # noqa: E402
from test_t5_vs_transformers import save_tiny_t5  # noqa: E402
from test_training_loop import _assert_resume_matches  # noqa: E402
from vqd_jax import build, configs_io, encode, sample  # noqa: E402
from vqd_jax import images as images_lib  # noqa: E402
from vqd_jax.data import TokenSource  # noqa: E402
from vqd_jax.data.shapes import ShapesSource  # noqa: E402
from vqd_jax.inference import VQDiffusionPipeline  # noqa: E402
from vqd_jax.text import load_encoder  # noqa: E402
from vqd_jax.training import loop  # noqa: E402

torch = pytest.importorskip("torch", reason="the reference encoders are PyTorch")
transformers = pytest.importorskip("transformers", reason="the checkpoints are saved by "
                                   "transformers")

pytestmark = pytest.mark.reference
CLIP_TEXT_LENGTH = 8
T5_LENGTH = 6
NAMES = ["clip_image", "clip_text", "t5"]  # the order of the records' layout


@pytest.fixture(scope="module")
def clip_text_dir(tmp_path_factory):
  """A tiny random ``CLIPTextModelWithProjection`` with its tokenizer."""
  directory = str(tmp_path_factory.mktemp("clip_text"))
  vocab = write_tiny_clip_tokenizer(directory)
  torch.manual_seed(0)
  config = transformers.CLIPTextConfig(
      vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=77, projection_dim=24,
      bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=0)
  model = transformers.CLIPTextModelWithProjection(config).eval()
  model.save_pretrained(directory)
  return directory, model


def test_clip_text_source_matches_transformers(clip_text_dir):
  directory, model = clip_text_dir
  encoder = load_encoder(directory)
  assert (encoder.kind, encoder.width, encoder.pooled_width) == ("clip_text", 32, 24)
  prompts = ["a photo of a red cat", "dog", ""]
  states, mask, pooled = encoder.encode(prompts)
  ids, _ = encoder.tokenizer(prompts)
  with torch.no_grad():
    out = model(torch.from_numpy(ids.astype(np.int64)),
                attention_mask=torch.from_numpy(mask.astype(np.int64)))
  ref_states = out.last_hidden_state.numpy()
  np.testing.assert_allclose(states[mask], ref_states[mask], atol=1e-4)
  np.testing.assert_allclose(pooled, out.text_embeds.numpy(), atol=1e-4)


def _encode_records(vq_dir, out, overrides, capsys=None):
  args = ["--vqvae-workdir", vq_dir, "--config", "configs/diffusion.py:tiny", "--out", out,
          "--num-examples", "48", "--batch-size", "16"] + overrides
  assert encode.main(args) == 0


@pytest.fixture(scope="module")
def source_dirs(clip_text_dir, tmp_path_factory):
  """``{name: folder}``: tiny random T5 encoder, CLIP text and CLIP vision checkpoints."""
  t5_dir = tmp_path_factory.mktemp("t5")
  save_tiny_t5(t5_dir)
  torch.manual_seed(2)
  vision_dir = str(tmp_path_factory.mktemp("clip_image"))
  config = transformers.CLIPVisionConfig(**TOWER, projection_dim=16)
  transformers.CLIPVisionModelWithProjection(config).eval().save_pretrained(vision_dir)
  transformers.CLIPImageProcessor(**PROCESSOR).save_pretrained(vision_dir)
  return {"t5": str(t5_dir), "clip_text": clip_text_dir[0], "clip_image": vision_dir}


def _source_overrides(dirs, prefix=""):
  return [f"{prefix}embeddings.{name}.path={path}" for name, path in dirs.items()] + [
      f"{prefix}embeddings.clip_text.max_length={CLIP_TEXT_LENGTH}",
      f"{prefix}embeddings.t5.max_length={T5_LENGTH}"]


@pytest.fixture(scope="module")
def embedding_run(source_dirs, tiny_vq_dir, tmp_path_factory):
  """Token records with T5, CLIP text and CLIP image embeddings, and a tiny denoiser trained 4
  steps on them."""
  root = tmp_path_factory.mktemp("embedding_run")
  tokens = str(root / "tokens")
  _encode_records(tiny_vq_dir, tokens, _source_overrides(source_dirs, "--config."))
  overrides = [f"vqvae_workdir={tiny_vq_dir}", "data.source=tokens", f"data.path={tokens}",
               "train.sample_every=4"] + _source_overrides(source_dirs)
  workdir = str(root / "dm")
  loop.train_and_evaluate(configs_io.load_config("configs/diffusion.py:tiny", overrides), workdir)
  return tokens, workdir, overrides


def test_records_hold_the_encoders_outputs(source_dirs, embedding_run):
  tokens, _, overrides = embedding_run
  source = TokenSource(tokens)
  assert [s["name"] for s in source.embeddings] == NAMES
  assert source.embeddings[1] == {"name": "clip_text", "width": 32, "length": CLIP_TEXT_LENGTH,
                                  "pooled_width": 24, "drop_rate": 0.2}
  record = source[3]
  assert record["clip_text_states"].dtype == np.float16
  close = dict(atol=2e-3, rtol=2e-3)  # float16 storage
  states, mask, pooled = load_encoder(source_dirs["clip_text"]).encode([record["caption"]])
  np.testing.assert_allclose(record["clip_text_states"], states[0, :CLIP_TEXT_LENGTH], **close)
  np.testing.assert_array_equal(record["clip_text_mask"], mask[0, :CLIP_TEXT_LENGTH])
  np.testing.assert_allclose(record["clip_text_pooled"], pooled[0], **close)
  states, mask = load_encoder(source_dirs["t5"]).encode_text([record["caption"]])
  length = min(T5_LENGTH, states.shape[1])
  np.testing.assert_allclose(record["t5_states"][:length], states[0, :length], **close)
  np.testing.assert_array_equal(record["t5_mask"][:length], mask[0, :length])
  # The image embedding is the one of the record's own image (the data are regenerated here).
  data = configs_io.load_config("configs/diffusion.py:tiny", overrides).data
  example = ShapesSource(resolution=data.image_size, seed=data.seed,
                         two_object_prob=data.two_object_prob)[3]
  assert example["caption"] == record["caption"]
  image_embeds = load_encoder(source_dirs["clip_image"]).encode_images(example["image"][None])
  np.testing.assert_allclose(record["clip_image_pooled"], image_embeds[0], **close)


def test_the_run_trains_and_keeps_its_layout(embedding_run):
  _, workdir, _ = embedding_run
  sources = build.embedding_sources(workdir)
  assert [(s.name, s.length, s.pooled_width) for s in sources] == [
      ("clip_image", 0, 16), ("clip_text", CLIP_TEXT_LENGTH, 24), ("t5", T5_LENGTH, 0)]
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
  assert losses and np.all(np.isfinite(losses))
  assert os.path.exists(os.path.join(workdir, "previews", "samples_0000004.png"))


def test_the_run_resumes_exactly(embedding_run, tiny_vq_dir, tmp_path):
  _, _, overrides = embedding_run
  _assert_resume_matches("configs/diffusion.py:tiny", tmp_path,
                         **dict(o.split("=", 1) for o in overrides))


def test_pipeline_samples_with_each_subset_of_sources(embedding_run):
  _, workdir, _ = embedding_run
  pipe = VQDiffusionPipeline.from_run(workdir)
  assert set(pipe.embedders) == set(NAMES)
  prompts = ["a large red circle", "a small blue square"]
  reference = ShapesSource(resolution=48, seed=5)[0]["image"]  # any size: CLIP preprocesses it
  kwargs = dict(num_inference_steps=4, guidance_scale=2.0, seed=1)
  subsets = {"text": {}, "text+image": dict(image=reference),
             "image": dict(image=reference, use_text=False), "none": dict(use_text=False)}
  images = {name: pipe(prompts, **kw, **kwargs) for name, kw in subsets.items()}
  for out in images.values():
    assert out.shape == (2,) + pipe.image_size + (3,) and out.dtype == np.uint8
  np.testing.assert_array_equal(images["text"], pipe(prompts, **kwargs))
  # Each source matters: the same seed gives other samples when a source is added or removed.
  assert not np.array_equal(images["text"], images["text+image"])
  assert not np.array_equal(images["image"], images["none"])
  embedded = pipe.embed(prompts, reference, 2)
  assert set(embedded) == {"t5_states", "t5_mask", "clip_text_states", "clip_text_mask",
                           "clip_text_pooled", "clip_image_pooled"}
  assert set(pipe.embed(None, reference, 2)) == {"clip_image_pooled"}
  with pytest.raises(ValueError, match="3 reference images for 2 prompts"):
    pipe(prompts, num_inference_steps=4, image=np.stack([reference] * 3))
  with pytest.raises(ValueError, match="diffusers VQ-Diffusion layout cannot hold"):
    pipe.save_pretrained(os.path.join(workdir, "..", "export"))


@covers("sample --image", "sample --image-only")
def test_the_sample_command_and_its_errors(embedding_run, tmp_path):
  _, workdir, _ = embedding_run
  out = str(tmp_path / "samples")
  assert sample.main(["--workdir", workdir, "--prompt", "a red circle", "--num-samples", "2",
                      "--steps", "4", "--out", out]) == 0
  assert len(os.listdir(out)) == 4  # two images, grid.png, samples.jsonl
  reference = str(tmp_path / "ref.png")
  images_lib.save_png(reference, ShapesSource(resolution=32, seed=5)[0]["image"])
  images = {"text": _written(out)}
  for name, extra in (("text+image", ["--prompt", "a red circle"]), ("image", ["--image-only"])):
    folder = str(tmp_path / name)
    assert sample.main(["--workdir", workdir, "--image", reference, "--num-samples", "2",
                        "--steps", "4", "--out", folder] + extra) == 0
    assert len(os.listdir(folder)) == 4
    images[name] = _written(folder)
    with open(os.path.join(folder, "samples.jsonl"), encoding="utf-8") as f:
      record = json.loads(f.readline())
    assert (record["image"], record["prompt"]) == (reference, extra[1] if name == "text+image"
                                                   else "")
  # Same seed: the reference image changes the samples, and so does dropping the text.
  assert not np.array_equal(images["text"], images["text+image"])
  assert not np.array_equal(images["text+image"], images["image"])
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"not a png")
  with pytest.raises(SystemExit, match="cannot be read as an image"):
    sample.main(["--workdir", workdir, "--prompt", "x", "--image", str(bad), "--out", out])
  with pytest.raises(SystemExit, match="give --image REF.png"):
    sample.main(["--workdir", workdir, "--prompt", "x", "--image-only", "--out", out])


def _written(folder) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  return np.stack([np.asarray(Image.open(os.path.join(folder, f"0000{i}.png")).convert("RGB"))
                   for i in range(2)])


def test_a_source_missing_from_the_records_is_named(embedding_run, tiny_vq_dir, source_dirs,
                                                    tmp_path):
  _, _, overrides = embedding_run
  tokens = str(tmp_path / "clip_text_tokens")
  _encode_records(tiny_vq_dir, tokens, _source_overrides({"clip_text": source_dirs["clip_text"]},
                                                         "--config."))
  config = configs_io.load_config("configs/diffusion.py:tiny", overrides + [f"data.path={tokens}"])
  with pytest.raises(ValueError, match=r"names \['clip_image', 't5'\].*hold \['clip_text'\]"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  config = configs_io.load_config("configs/diffusion.py:tiny", overrides + ["data.source=shapes"])
  with pytest.raises(ValueError, match="precomputed: train on token records"):
    loop.train_and_evaluate(config, str(tmp_path / "run2"))
