"""The real-image presets (``emoji``: a captioned folder; ``cifar10``: class sub-folders) train
both stages end to end on folders of the same layouts, generated here, and produce 8x8 tokens."""

import json
import os

import numpy as np
import PIL.Image
import pytest

from vqd_jax import configs_io
from vqd_jax.inference import VQDiffusionPipeline
from vqd_jax.training import clip_task, loop

SHORT = ["train.num_steps=2", "train.batch_size=4", "train.log_every=1", "train.ckpt_every=2",
         "train.sample_every=0", "train.async_checkpoints=False", "optim.warmup_steps=0"]


def _image(rng, size, alpha=False):
  pixels = rng.integers(0, 256, size=(size, size, 4 if alpha else 3), dtype=np.uint8)
  return PIL.Image.fromarray(pixels, "RGBA" if alpha else "RGB")


def _captioned_folder(root, rng):
  os.makedirs(root / "images")
  with open(root / "captions.jsonl", "w", encoding="utf-8") as f:
    for i, name in enumerate(["red apple", "grinning face", "large blue circle", "rocket"] * 2):
      _image(rng, 72, alpha=True).save(root / "images" / f"{i}.png")  # RGBA like Noto Emoji
      f.write(json.dumps({"file": f"images/{i}.png", "caption": f"an emoji of {name}"}) + "\n")
  return root


def _class_folder(root, rng):
  for name in ("cat", "ship", "truck"):
    os.makedirs(root / name)
    for i in range(3):
      _image(rng, 32).save(root / name / f"{i:04d}.jpg")
  return root


@pytest.mark.parametrize("preset", ["emoji", "cifar10"])
def test_both_stages_train_on_the_preset_and_sample(preset, tmp_path):
  rng = np.random.default_rng(0)
  make = _captioned_folder if preset == "emoji" else _class_folder
  data = str(make(tmp_path / "data", rng))
  vq, dm = str(tmp_path / "vq"), str(tmp_path / "dm")
  loop.train_and_evaluate(configs_io.load_config(
      f"configs/vqvae.py:{preset}", [f"data.path={data}", *SHORT, "loss.warmup_steps=1"]), vq)
  config = configs_io.load_config(f"configs/diffusion.py:{preset}",
                                  [f"data.path={data}", f"vqvae_workdir={vq}", *SHORT])
  loop.train_and_evaluate(config, dm)
  with open(os.path.join(dm, "metrics.jsonl"), encoding="utf-8") as f:
    losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
  assert len(losses) == 2 and np.isfinite(losses).all()
  pipe = VQDiffusionPipeline.from_run(dm)
  prompt = "an emoji of rocket" if preset == "emoji" else "a photo of a ship"
  tokens = pipe.generate_tokens([prompt], seed=0, num_inference_steps=2)
  assert tokens.shape == (1, 64) and tokens.max() < 512
  images = pipe([prompt], seed=0, num_inference_steps=2)
  assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8


def test_the_presets_refuse_to_start_without_a_folder(tmp_path):
  with pytest.raises((FileNotFoundError, ValueError), match="data.path|folder"):
    loop.train_and_evaluate(configs_io.load_config("configs/vqvae.py:cifar10", SHORT),
                            str(tmp_path / "vq"))


@pytest.mark.parametrize("preset", ["emoji", "cifar10"])
def test_the_contrastive_preset_trains_on_the_same_folder(preset, tmp_path):
  """One ``--config.data.path`` sets the training and the evaluation folder alike."""
  rng = np.random.default_rng(1)
  make = _captioned_folder if preset == "emoji" else _class_folder
  data = str(make(tmp_path / "data", rng))
  # An evaluation at the last step: retrieval on the evaluation folder, then the towers written.
  config = configs_io.load_config(f"configs/clip.py:{preset}",
                                  [f"data.path={data}", *SHORT, "train.sample_every=2"])
  assert config.eval.data.path == data
  if preset == "cifar10":  # stored class by class: evaluation spreads over every class
    few = configs_io.load_config(f"configs/clip.py:{preset}",
                                 [f"data.path={data}", "eval.num_examples=3"])
    assert sorted(clip_task.held_out_examples(few)[1]) == [
        "a photo of a cat", "a photo of a ship", "a photo of a truck"]
  run = str(tmp_path / "clip")
  loop.train_and_evaluate(config, run)
  with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows if "loss" in r] == [1, 2]
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
  assert any(k.startswith("eval/") for r in rows for k in r), rows
  for tower in ("clip_text", "clip_image"):
    assert os.path.exists(os.path.join(run, tower, "config.json"))
