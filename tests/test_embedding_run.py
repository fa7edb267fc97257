"""A denoiser conditioned on precomputed embeddings, as users run it: tiny random encoders in the
transformers layout -> ``python -m vqd_jax.encode`` stores their outputs in the token records ->
training (resumes exactly) -> the pipeline and ``python -m vqd_jax.sample`` with each subset of
sources. The frozen CLIP text source is checked against transformers' PyTorch model."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from test_clip_text import write_tiny_clip_tokenizer  # noqa: E402
from test_training_loop import _assert_resume_matches  # noqa: E402
from vqd_jax import build, configs_io, encode, sample  # noqa: E402
from vqd_jax.data import TokenSource  # noqa: E402
from vqd_jax.inference import VQDiffusionPipeline  # noqa: E402
from vqd_jax.text import load_encoder  # noqa: E402
from vqd_jax.training import loop  # noqa: E402

torch = pytest.importorskip("torch", reason="the reference encoders are PyTorch")
transformers = pytest.importorskip("transformers", reason="the checkpoints are saved by "
                                   "transformers")

pytestmark = pytest.mark.reference
CLIP_TEXT_LENGTH = 8


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
def embedding_run(clip_text_dir, tiny_vq_dir, tmp_path_factory):
  """Token records with CLIP text embeddings, and a tiny denoiser trained 4 steps on them."""
  root = tmp_path_factory.mktemp("embedding_run")
  tokens = str(root / "tokens")
  sources = [f"--config.embeddings.clip_text.path={clip_text_dir[0]}",
             f"--config.embeddings.clip_text.max_length={CLIP_TEXT_LENGTH}"]
  _encode_records(tiny_vq_dir, tokens, sources)
  overrides = [f"vqvae_workdir={tiny_vq_dir}", "data.source=tokens", f"data.path={tokens}",
               f"embeddings.clip_text.path={clip_text_dir[0]}",
               f"embeddings.clip_text.max_length={CLIP_TEXT_LENGTH}", "train.sample_every=4"]
  workdir = str(root / "dm")
  loop.train_and_evaluate(configs_io.load_config("configs/diffusion.py:tiny", overrides), workdir)
  return tokens, workdir, overrides


def test_records_hold_the_encoders_outputs(clip_text_dir, embedding_run):
  tokens, _, _ = embedding_run
  source = TokenSource(tokens)
  assert [s["name"] for s in source.embeddings] == ["clip_text"]
  assert source.embeddings[0] == {"name": "clip_text", "width": 32, "length": CLIP_TEXT_LENGTH,
                                  "pooled_width": 24, "drop_rate": 0.2}
  record = source[3]
  assert record["clip_text_states"].dtype == np.float16
  states, mask, pooled = load_encoder(clip_text_dir[0]).encode([record["caption"]])
  np.testing.assert_allclose(record["clip_text_states"], states[0, :CLIP_TEXT_LENGTH], atol=2e-3,
                             rtol=2e-3)  # float16 storage
  np.testing.assert_array_equal(record["clip_text_mask"], mask[0, :CLIP_TEXT_LENGTH])
  np.testing.assert_allclose(record["clip_text_pooled"], pooled[0], atol=2e-3, rtol=2e-3)


def test_the_run_trains_and_keeps_its_layout(embedding_run):
  _, workdir, _ = embedding_run
  sources = build.embedding_sources(workdir)
  assert [(s.name, s.length, s.pooled_width) for s in sources] == [("clip_text", 8, 24)]
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
  assert losses and np.all(np.isfinite(losses))
  assert os.path.exists(os.path.join(workdir, "previews", "samples_0000004.png"))


def test_the_run_resumes_exactly(embedding_run, tiny_vq_dir, tmp_path):
  _, _, overrides = embedding_run
  _assert_resume_matches("configs/diffusion.py:tiny", tmp_path,
                         **dict(o.split("=", 1) for o in overrides))


def test_pipeline_samples_with_and_without_the_source(embedding_run):
  _, workdir, _ = embedding_run
  pipe = VQDiffusionPipeline.from_run(workdir)
  assert set(pipe.embedders) == {"clip_text"}
  prompts = ["a large red circle", "a small blue square"]
  images = pipe(prompts, num_inference_steps=4, guidance_scale=2.0, seed=1)
  assert images.shape == (2,) + pipe.image_size + (3,) and images.dtype == np.uint8
  np.testing.assert_array_equal(images, pipe(prompts, num_inference_steps=4, guidance_scale=2.0,
                                             seed=1))
  # The source matters: its null in place of the prompts' embeddings changes the samples.
  embedded = pipe.embed(prompts, None, 2)
  assert set(embedded) == {"clip_text_states", "clip_text_mask", "clip_text_pooled"}
  with pytest.raises(ValueError, match="not conditioned on a clip_image source"):
    pipe(prompts, num_inference_steps=4, image=np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match="diffusers VQ-Diffusion layout cannot hold"):
    pipe.save_pretrained(os.path.join(workdir, "..", "export"))


def test_the_sample_command_and_its_errors(embedding_run, tmp_path):
  _, workdir, _ = embedding_run
  out = str(tmp_path / "samples")
  assert sample.main(["--workdir", workdir, "--prompt", "a red circle", "--num-samples", "2",
                      "--steps", "4", "--out", out]) == 0
  assert len(os.listdir(out)) == 4  # two images, grid.png, samples.jsonl
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"not a png")
  with pytest.raises(SystemExit, match="cannot be read as an image"):
    sample.main(["--workdir", workdir, "--prompt", "x", "--image", str(bad), "--out", out])
  with pytest.raises(SystemExit, match="give --image REF.png"):
    sample.main(["--workdir", workdir, "--prompt", "x", "--image-only", "--out", out])


def test_a_source_missing_from_the_records_is_named(embedding_run, clip_text_dir, tmp_path):
  tokens, _, overrides = embedding_run
  config = configs_io.load_config("configs/diffusion.py:tiny", overrides + [
      f"embeddings.t5.path={clip_text_dir[0]}"])
  with pytest.raises(ValueError, match=r"names \['t5'\].*hold \['clip_text'\]"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  config = configs_io.load_config("configs/diffusion.py:tiny", overrides + ["data.source=shapes"])
  with pytest.raises(ValueError, match="precomputed: train on token records"):
    loop.train_and_evaluate(config, str(tmp_path / "run2"))
