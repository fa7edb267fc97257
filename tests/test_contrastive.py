"""The contrastive stage: CLIP/SigLIP losses and retrieval against float64 brute force, and a tiny
``configs/clip.py:tiny`` run that trains, resumes, beats chance on held-out pairs and exports towers
that load back (ours and transformers') with the trained embeddings."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from vqd_jax import build, configs_io  # noqa: E402
from vqd_jax.interop.clip import load_clip_text_encoder  # noqa: E402
from vqd_jax.interop.clip_vision import load_clip_vision_encoder  # noqa: E402
from vqd_jax.text import CLIPImageEncoder, WordTokenizer, clip_preprocess, load_encoder  # noqa: E402
from vqd_jax.text import contrastive  # noqa: E402
from vqd_jax.text.dual_encoder import pool_at_eos  # noqa: E402
from vqd_jax.evaluation import clip_score  # noqa: E402
from vqd_jax.training import clip_task, loop  # noqa: E402

ATOL = 1e-4


# ----------------------------------------------------------------------------- float64 references


def _normalized(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference_logits(img, txt, scale, bias=0.0):
  n = len(img)
  a, b = _normalized(img.astype(np.float64)), _normalized(txt.astype(np.float64))
  out = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      out[i, j] = np.exp(scale) * sum(a[i, k] * b[j, k] for k in range(a.shape[1])) + bias
  return out


def _reference_softmax_loss(logits, positives):
  n, total = len(logits), 0.0
  for z, pos in ((logits, positives), (logits.T, positives.T)):
    for i in range(n):
      log_norm = np.log(sum(np.exp(z[i, j]) for j in range(n)))
      targets = [j for j in range(n) if pos[i, j]]
      total += sum(-(z[i, j] - log_norm) / len(targets) for j in targets) / n
  return total / 2


def _reference_sigmoid_loss(logits, positives):
  n, total = len(logits), 0.0
  for i in range(n):
    for j in range(n):
      sign = 1.0 if positives[i, j] else -1.0
      total += np.log1p(np.exp(-sign * logits[i, j]))
  return total / n


def _pairs(n=6, width=5, seed=0):
  rng = np.random.default_rng(seed)
  img = rng.normal(size=(n, width)).astype(np.float32)
  txt = (img + 0.8 * rng.normal(size=(n, width))).astype(np.float32)
  ids = np.array([[2, 5, 3], [2, 6, 3], [2, 5, 3], [2, 7, 3], [2, 6, 3], [2, 8, 3]])[:n]
  return img, txt, ids


@pytest.mark.parametrize("caption_positives", [False, True])
def test_softmax_loss_matches_brute_force(caption_positives):
  img, txt, ids = _pairs()
  positives = np.asarray(contrastive.same_rows(jnp.asarray(ids))) if caption_positives else None
  logits = contrastive.contrastive_logits(jnp.asarray(img), jnp.asarray(txt), jnp.float32(1.7))
  ref_logits = _reference_logits(img, txt, 1.7)
  np.testing.assert_allclose(logits, ref_logits, atol=ATOL, rtol=1e-5)
  ref_pos = np.eye(6, dtype=bool) if positives is None else positives
  assert caption_positives == (ref_pos.sum() > 6)  # rows 0/2 and 1/4 share captions
  np.testing.assert_allclose(contrastive.softmax_loss(logits, positives),
                             _reference_softmax_loss(ref_logits, ref_pos), rtol=1e-5)
  np.testing.assert_allclose(contrastive.contrastive_loss("softmax", logits, positives),
                             _reference_softmax_loss(ref_logits, ref_pos), rtol=1e-5)


@pytest.mark.parametrize("caption_positives", [False, True])
def test_sigmoid_loss_matches_brute_force(caption_positives):
  img, txt, ids = _pairs(seed=1)
  positives = np.asarray(contrastive.same_rows(jnp.asarray(ids))) if caption_positives else None
  logits = contrastive.contrastive_logits(jnp.asarray(img), jnp.asarray(txt), jnp.float32(2.3),
                                          jnp.float32(-3.0))
  ref_logits = _reference_logits(img, txt, 2.3, -3.0)
  np.testing.assert_allclose(logits, ref_logits, atol=ATOL, rtol=1e-5)
  ref_pos = np.eye(6, dtype=bool) if positives is None else positives
  np.testing.assert_allclose(contrastive.sigmoid_loss(logits, positives),
                             _reference_sigmoid_loss(ref_logits, ref_pos), rtol=1e-5)
  with pytest.raises(ValueError, match="softmax"):
    contrastive.contrastive_loss("hinge", logits)


def test_retrieval_accuracy_matches_brute_force():
  rng = np.random.default_rng(2)
  img = rng.normal(size=(40, 8))
  txt = img + 1.5 * rng.normal(size=(40, 8))
  groups = rng.integers(0, 25, 40)
  for g in (None, groups):
    gg = np.arange(40) if g is None else g
    got = contrastive.retrieval_accuracy(img, txt, g)
    a, b = _normalized(img), _normalized(txt)
    sims = [[float(a[i] @ b[j]) for j in range(40)] for i in range(40)]
    i2t = np.mean([gg[max(range(40), key=lambda j, i=i: sims[i][j])] == gg[i] for i in range(40)])
    t2i = np.mean([gg[max(range(40), key=lambda i, j=j: sims[i][j])] == gg[j] for j in range(40)])
    chance = np.mean([np.mean(gg == gg[i]) for i in range(40)])
    assert 0 < i2t < 1 and 0 < t2i < 1
    np.testing.assert_allclose([got["image_to_text"], got["text_to_image"], got["chance"]],
                               [i2t, t2i, chance], rtol=1e-12)


# ----------------------------------------------------------------------------- a tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """``configs/clip.py:tiny`` stopped half-way (as if preempted), then resumed to the end."""
  workdir = str(tmp_path_factory.mktemp("clip") / "run")
  config = configs_io.load_config("configs/clip.py:tiny")
  half = config.train.num_steps // 2
  loop.train_and_evaluate(config, workdir, stop_after=half)
  first = _eval_records(workdir)
  loop.train_and_evaluate(config, workdir)
  return workdir, config, first


def _eval_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if "eval/image_to_text" in r]


def test_tiny_run_resumes_and_beats_chance_on_held_out_pairs(tiny_run):
  workdir, config, first = tiny_run
  steps = config.train.num_steps
  records = _eval_records(workdir)
  assert [r["step"] for r in first] == [steps // 2]
  assert [r["step"] for r in records] == [steps // 2, steps]  # resumed, not restarted
  final = records[-1]
  assert final["eval/pairs"] == config.eval.num_examples
  assert 0 < final["eval/chance"] < 0.2
  for direction in ("image_to_text", "text_to_image"):
    assert final[f"eval/{direction}"] > 3 * final["eval/chance"], final
  # The held-out captions are not the training ones' seed, and evaluation says so when they are.
  same = configs_io.load_config("configs/clip.py:tiny", ["eval.data.seed=0"])
  with pytest.raises(ValueError, match="held out"):
    clip_task.held_out_examples(same)


def test_exported_towers_load_back_with_the_trained_embeddings(tiny_run):
  workdir, _, _ = tiny_run
  task, params = clip_task.trained_params(workdir)
  images, ids, mask, _ = task.held_out()
  images, ids, mask = images[:8], ids[:8], mask[:8]
  captions = task.tokenizer.decode(ids)
  want_image, want_text = task.embed(params, jnp.asarray(images), jnp.asarray(ids),
                                     jnp.asarray(mask))
  image_dir = os.path.join(workdir, clip_task.IMAGE_DIR)
  text_dir = os.path.join(workdir, clip_task.TEXT_DIR)
  # Image tower: our loader, and the frozen wrapper with its own preprocessing.
  encoder = CLIPImageEncoder.from_pretrained(image_dir)
  np.testing.assert_allclose(encoder.encode_images(images), want_image, atol=ATOL)
  module, vparams = load_clip_vision_encoder(image_dir)
  _, embeds = module.apply({"params": vparams}, jnp.asarray(clip_preprocess(images, image_dir)))
  np.testing.assert_allclose(embeds, want_image, atol=ATOL)
  # Text tower: load_clip_text_encoder + the saved projection + the saved word tokenizer.
  tokenizer = WordTokenizer.load(os.path.join(text_dir, "word_tokenizer.json"))
  assert tokenizer.vocab == task.tokenizer.vocab
  tmodule, tparams = load_clip_text_encoder(text_dir)
  states = tmodule.apply({"params": tparams}, jnp.asarray(ids), jnp.asarray(mask), normalize=False)
  projection = load_file(os.path.join(text_dir, "model.safetensors"))["text_projection.weight"]
  got_text = pool_at_eos(states, jnp.asarray(ids), tokenizer.eos_id) @ projection.T
  np.testing.assert_allclose(got_text, want_text, atol=ATOL)
  # As frozen sources through the public loader, with the word tokenizer read from the folder.
  text_source = load_encoder(text_dir)
  assert text_source.kind == "clip_text" and isinstance(text_source.tokenizer, WordTokenizer)
  np.testing.assert_allclose(text_source.encode(captions)[2], want_text, atol=ATOL)
  np.testing.assert_allclose(load_encoder(image_dir).encode_images(images), want_image, atol=ATOL)
  # Re-exporting from the checkpoint writes the same weights.
  before = load_file(os.path.join(image_dir, "model.safetensors"))
  clip_task.export_run(workdir)
  after = load_file(os.path.join(image_dir, "model.safetensors"))
  assert sorted(before) == sorted(after)
  for k in before:
    np.testing.assert_array_equal(before[k], after[k])


@pytest.mark.reference
def test_exported_towers_match_transformers(tiny_run):
  torch = pytest.importorskip("torch", reason="reference model needs PyTorch")
  transformers = pytest.importorskip("transformers", reason="reference model needs transformers")
  workdir, _, _ = tiny_run
  task, params = clip_task.trained_params(workdir)
  images, ids, mask, _ = task.held_out()
  want_image, want_text = task.embed(params, jnp.asarray(images[:8]), jnp.asarray(ids[:8]),
                                     jnp.asarray(mask[:8]))
  image_dir = os.path.join(workdir, clip_task.IMAGE_DIR)
  vision = transformers.CLIPVisionModelWithProjection.from_pretrained(image_dir).eval()
  processor = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)
  pixels = processor.from_pretrained(image_dir)(list(images[:8]), return_tensors="pt")
  text = transformers.CLIPTextModelWithProjection.from_pretrained(
      os.path.join(workdir, clip_task.TEXT_DIR)).eval()
  with torch.no_grad():
    hf_image = vision(pixel_values=pixels["pixel_values"]).image_embeds.numpy()
    hf_text = text(input_ids=torch.from_numpy(ids[:8].astype(np.int64)),
                   attention_mask=torch.from_numpy(mask[:8].astype(np.int64))).text_embeds.numpy()
  np.testing.assert_allclose(hf_image, want_image, atol=ATOL)
  np.testing.assert_allclose(hf_text, want_text, atol=ATOL)


def test_sigmoid_task_has_a_bias_and_bad_configs_fail(tmp_path):
  config = configs_io.load_config("configs/clip.py:tiny", ["loss=sigmoid"])
  task = clip_task.CLIPTask(config, str(tmp_path / "siglip"))
  batch = {k: jnp.asarray(v) for k, v in next(task.make_train_iterator(0, 1)).items()}
  params = nn.meta.unbox(jax.jit(task.init_state)(jax.random.key(0), batch).params)
  assert float(params["logit_bias"]) == -10.0 and float(params["logit_scale"]) == pytest.approx(
      np.log(10.0))
  loss, metrics = jax.jit(task.loss_fn)(params, batch)
  image, text = task.embed(params, batch["image"], batch["text_ids"], batch["text_mask"])
  logits = _reference_logits(np.asarray(image), np.asarray(text), np.log(10.0), -10.0)
  positives = np.asarray(contrastive.same_rows(batch["text_ids"]))
  np.testing.assert_allclose(loss, _reference_sigmoid_loss(logits, positives), rtol=1e-4)
  assert metrics["logit_bias"] == -10.0
  bad = configs_io.load_config("configs/clip.py:tiny", ["loss=hinge"])
  with pytest.raises(ValueError, match="softmax"):
    clip_task.CLIPTask(bad, str(tmp_path / "bad"))


def test_exported_text_tower_serves_as_a_denoisers_frozen_text_encoder(tiny_run, tmp_path):
  workdir, _, _ = tiny_run
  task, _ = clip_task.trained_params(workdir)
  text_dir = os.path.join(workdir, clip_task.TEXT_DIR)
  run = str(tmp_path / "run")
  build.save_clip_description(text_dir, run)  # what a text.encoder=clip run keeps
  config = configs_io.load_config("configs/diffusion.py:tiny", [
      "text.encoder=clip", f"text.clip_path={text_dir}",
      f"text.max_length={task.tokenizer.max_length}"])
  conditioner = build.conditioner(config, run)
  assert isinstance(conditioner.tokenizer, WordTokenizer)
  prompts = ["a large red circle", "a small blue square above a large green triangle"]
  np.testing.assert_array_equal(conditioner.tokenize(prompts)[0], task.tokenizer(prompts)[0])
  too_long = configs_io.load_config("configs/diffusion.py:tiny", [
      "text.encoder=clip", f"text.clip_path={text_dir}", "text.max_length=500"])
  with pytest.raises(ValueError, match="exceeds the CLIP encoder's"):
    build.conditioner(too_long, run)


def test_a_trained_run_gives_matching_captions_a_higher_clip_score(tiny_run):
  workdir, config, _ = tiny_run
  images, captions = clip_task.held_out_examples(config)
  scorer = clip_score.load_clip_scorer(workdir)  # the run's clip_text/ and clip_image/
  matched = clip_score.clip_scores(*scorer, images, captions)
  shuffled = clip_score.clip_scores(*scorer, images, captions[1:] + captions[:1])
  assert matched.mean() > shuffled.mean() + 3 * shuffled.std() / np.sqrt(len(shuffled))
