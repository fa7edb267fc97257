"""Training a denoiser on frozen CLIP text states, then sampling it as users do.

A tiny random ``CLIPTextModel`` is saved in the transformers layout (config.json, safetensors,
vocab.json, merges.txt); ``config.text.encoder=clip`` trains the tiny denoiser on its states. The
encoder must stay exactly as loaded, the run folder must carry what sampling needs, and the
pipeline's text states must be the PyTorch model's, L2-normalised per token.
"""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from test_clip_text import write_tiny_clip_tokenizer  # noqa: E402
from vqd_jax import configs_io, sample  # noqa: E402
from vqd_jax.inference import VQDiffusionPipeline, load_diffusion_run  # noqa: E402
from vqd_jax.interop.clip import load_clip_text_encoder  # noqa: E402
from vqd_jax.training import loop  # noqa: E402

torch = pytest.importorskip("torch", reason="the reference CLIP text model is PyTorch")
transformers = pytest.importorskip("transformers", reason="the CLIP checkpoint is saved by "
                                   "transformers")

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  """A tiny random CLIP text checkpoint (weights and tokenizer in one folder), and its model."""
  directory = str(tmp_path_factory.mktemp("tiny_clip"))
  vocab = write_tiny_clip_tokenizer(directory)
  torch.manual_seed(0)
  config = transformers.CLIPTextConfig(
      vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
      eos_token_id=vocab["<|endoftext|>"], pad_token_id=0)
  model = transformers.CLIPTextModel(config).eval()
  model.save_pretrained(directory)
  return directory, model


@pytest.fixture(scope="module")
def clip_run(clip_dir, tiny_vq_dir, tmp_path_factory):
  directory, _ = clip_dir
  workdir = str(tmp_path_factory.mktemp("clip_run") / "dm")
  config = configs_io.load_config("configs/diffusion.py:tiny", [
      "text.encoder=clip", f"text.clip_path={directory}", f"vqvae_workdir={tiny_vq_dir}",
      "train.sample_every=4"])
  loop.train_and_evaluate(config, workdir)
  return workdir


def test_the_run_trains_the_denoiser_and_keeps_clip_frozen(clip_dir, clip_run):
  directory, _ = clip_dir
  run = load_diffusion_run(clip_run, use_ema=False)
  assert run.step == 4 and run.conditioner.source == "clip" and not run.conditioner.trainable
  assert run.generator.denoiser.cross_attention_dim == 32
  _, pretrained = load_clip_text_encoder(directory)
  jax.tree.map(np.testing.assert_array_equal, run.params["text_encoder"], pretrained)
  # The run folder carries the CLIP description (not its weights: those are in the checkpoint).
  assert sorted(os.listdir(os.path.join(clip_run, "clip_text"))) == [
      "config.json", "merges.txt", "tokenizer_config.json", "vocab.json"]
  with open(os.path.join(clip_run, "metrics.jsonl"), encoding="utf-8") as f:
    losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
  assert losses and all(np.isfinite(losses))
  assert os.path.exists(os.path.join(clip_run, "previews", "samples_0000004.png"))


def test_the_pipeline_encodes_prompts_like_the_pytorch_clip(clip_dir, clip_run):
  _, model = clip_dir
  pipe = VQDiffusionPipeline.from_run(clip_run)
  prompts = ["a photo of a red cat", "a dog"]
  ids, _ = pipe.tokenize(prompts)
  assert pipe.text_kind == "clip" and ids.shape == (2, pipe.conditioner.length)
  with torch.no_grad():
    ref = model(torch.from_numpy(ids.astype(np.int64))).last_hidden_state.numpy()
  ref = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(pipe.encode_prompt(prompts)), ref, atol=2e-5)
  images = pipe(prompts, num_inference_steps=4, guidance_scale=2.0, seed=1)
  assert images.shape == (2,) + pipe.image_size + (3,) and images.dtype == np.uint8
  again = pipe(prompts, num_inference_steps=4, guidance_scale=2.0, seed=1)
  np.testing.assert_array_equal(images, again)


def test_the_sample_command_samples_the_clip_run(clip_run, tmp_path):
  out = str(tmp_path / "samples")
  assert sample.main(["--workdir", clip_run, "--prompt", "a red cat", "--prompt", "a dog",
                      "--num-samples", "2", "--steps", "4", "--out", out]) == 0
  with open(os.path.join(out, "samples.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert [r["prompt"] for r in records] == ["a red cat"] * 2 + ["a dog"] * 2
  assert all(r["checkpoint_step"] == 4 and r["num_steps"] == 4 for r in records)
  assert os.path.exists(os.path.join(out, "grid.png"))


def test_the_sample_command_paints_with_clip_tokens(clip_run, tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  mask = tmp_path / "top.png"
  Image.fromarray(np.repeat(np.array([[255], [0]], np.uint8), 8, 0).repeat(16, 1)).save(mask)
  out = str(tmp_path / "painted")
  args = ["--workdir", clip_run, "--prompt", "a red zebra", "--num-samples", "1", "--steps", "2",
          "--out", out]
  assert sample.main(args + ["--paint", f"red zebra={mask}"]) == 0  # BPE: red</w> z e b r a</w>
  with pytest.raises(SystemExit, match=r"'dog'.*tokens are \['<\|startoftext\|>', 'a</w>'"):
    sample.main(args + ["--paint", f"dog={mask}"])
