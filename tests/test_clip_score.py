"""CLIP score against transformers' PyTorch CLIPModel on a tiny random checkpoint with real
(shapes) images, and ``python -m vqd_jax.evaluate clip-score`` on a samples folder."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cli_coverage import covers  # noqa: E402
from test_clip_text import write_tiny_clip_tokenizer  # noqa: E402
from test_clip_vision_vs_transformers import PROCESSOR, TOWER  # noqa: E402
from vqd_jax import evaluate, images as images_lib  # noqa: E402
from vqd_jax.data.shapes import ShapesSource  # noqa: E402
from vqd_jax.evaluation import clip_score  # noqa: E402

torch = pytest.importorskip("torch", reason="the reference model is PyTorch")
transformers = pytest.importorskip("transformers", reason="the checkpoint is saved by transformers")

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("clip"))
  return directory, write_tiny_clip(directory)


def write_tiny_clip(directory):
  """A tiny random transformers CLIPModel (and its processor) saved in ``directory``; the model."""
  vocab = write_tiny_clip_tokenizer(directory)
  torch.manual_seed(3)
  text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, bos_token_id=vocab["<|startoftext|>"],
              eos_token_id=vocab["<|endoftext|>"], pad_token_id=0)
  config = transformers.CLIPConfig(text_config=text, vision_config=TOWER, projection_dim=12)
  model = transformers.CLIPModel(config).eval()
  model.save_pretrained(directory)
  transformers.CLIPImageProcessor(**PROCESSOR).save_pretrained(directory)
  return model


def _examples(n):
  source = ShapesSource(seed=11)
  return np.stack([source[i]["image"] for i in range(n)]), [source[i]["caption"] for i in range(n)]


def test_scores_match_transformers(clip_dir):
  directory, model = clip_dir
  images, captions = _examples(8)
  text_encoder, image_encoder = clip_score.load_clip_scorer(directory)
  got = clip_score.clip_scores(text_encoder, image_encoder, images, captions, batch_size=3)
  ids, mask = text_encoder.tokenizer(captions)
  processor = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)
  pixels = processor.from_pretrained(directory)(list(images), return_tensors="pt")["pixel_values"]
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                attention_mask=torch.from_numpy(mask.astype(np.int64)), pixel_values=pixels)
  t = out.text_embeds.numpy().astype(np.float64)
  v = out.image_embeds.numpy().astype(np.float64)
  cos = np.sum(t * v, -1) / np.linalg.norm(t, axis=-1) / np.linalg.norm(v, axis=-1)
  want = np.maximum(100 * cos, 0)
  assert (want > 0).sum() >= 2  # the clipping at 0 is not all that is compared
  np.testing.assert_allclose(got, want, atol=2e-3)


@covers("evaluate clip --samples", "evaluate clip --clip", "evaluate clip --output",
        "evaluate clip-score --samples", "evaluate clip-score --clip",
        "evaluate clip-score --output")
def test_the_command_scores_a_samples_folder(clip_dir, tmp_path, capsys):
  directory, _ = clip_dir
  images, captions = _examples(5)
  samples = tmp_path / "samples"
  samples.mkdir()
  with open(samples / "samples.jsonl", "w", encoding="utf-8") as f:
    for i, (image, caption) in enumerate(zip(images, captions)):
      images_lib.save_png(str(samples / f"{i}.png"), image)
      f.write(json.dumps({"file": f"{i}.png", "prompt": caption}) + "\n")
    (samples / "broken.png").write_bytes(b"not a png")
    f.write(json.dumps({"file": "broken.png", "prompt": captions[0]}) + "\n")
  assert evaluate.main(["clip", "--samples", str(samples), "--clip", directory]) == 0
  with open(samples / "clip_score.json", encoding="utf-8") as f:
    report = json.load(f)
  want = clip_score.clip_scores(*clip_score.load_clip_scorer(directory), images, captions)
  assert report["num_samples"] == 5 and report["unreadable"] == ["broken.png"]
  assert report["clip_score"] == pytest.approx(want.mean(), abs=1e-4)
  assert report["standard_error"] == pytest.approx(want.std(ddof=1) / np.sqrt(5), abs=1e-4)
  assert report["model"] == "CLIP checkpoint"
  assert capsys.readouterr().out.splitlines()[-1] == f"clip {report['clip_score']:.4f}"
  # clip-score is another name of the same subcommand (one parser): --output moves the report.
  # pylint: disable-next=protected-access
  choices = next(a for a in evaluate.build_parser()._actions if a.dest == "metric").choices
  assert choices["clip-score"] is choices["clip"]
  output = tmp_path / "elsewhere.json"
  assert evaluate.main(["clip-score", "--samples", str(samples), "--clip", directory,
                        "--output", str(output)]) == 0
  assert json.loads(output.read_text()) == report
  assert f"report: {output}" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="neither a CLIP checkpoint folder"):
    evaluate.main(["clip-score", "--samples", str(samples), "--clip", str(tmp_path)])  # alias
