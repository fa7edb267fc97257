"""Paint-with-words: the biased cross-attention against a float64 numpy reference, the bias's time
factor in closed form, phrase -> token columns for the word tokenizer and CLIP's BPE, masks onto
the token grid, the guidance rows left unpainted, per-token guidance scales against the closed form
``lu + g·(lc - lu)``, and the pipeline and ``--paint`` end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cli_coverage import covers
from vqd_jax import diffusion, sample
from vqd_jax.diffusion import schedules
from vqd_jax.inference import VQDiffusionPipeline, paint as paint_lib
from vqd_jax.inference.generate import TokenGenerator, paint_bias, per_token_guidance
from vqd_jax.layers import dot_product_attention
from vqd_jax.text import Conditioning, WordTokenizer, stack_rows
from vqd_jax.transformer import Text2ImageTransformer


def _reference_attention(q, k, v, key_mask, scaled_bias):
  """softmax(QKᵀ/√d + b · max(0, max visible logit of the example)) V in float64, row by row."""
  q, k, v, b = (np.asarray(a, np.float64) for a in (q, k, v, scaled_bias))
  batch, nq, heads, depth = q.shape
  out = np.zeros_like(q)
  for i in range(batch):
    logits = np.einsum("qhd,khd->hqk", q[i], k[i]) / np.sqrt(depth)
    visible = np.asarray(key_mask[i], bool)
    scale = max(0.0, logits[:, :, visible].max())
    logits = logits + np.broadcast_to(b, (batch, heads, nq, k.shape[1]))[i] * scale
    for h in range(heads):
      for n in range(nq):
        row = np.where(visible, logits[h, n], -np.inf)
        w = np.exp(row - row.max())
        out[i, n, h] = (w / w.sum()) @ v[i, :, h]
  return out


def test_scaled_bias_attention_matches_float64_reference():
  rng = np.random.default_rng(0)
  b, nq, nk, h, d = 3, 6, 5, 2, 4
  q, k, v = (rng.standard_normal((b, n, h, d)).astype(np.float32) for n in (nq, nk, nk))
  key_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 1, 0]], bool)
  scaled_bias = rng.uniform(-2, 2, (b, 1, nq, nk)).astype(np.float32)  # painted maps are signed
  got = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                              jnp.asarray(key_mask), scaled_bias=jnp.asarray(scaled_bias))
  np.testing.assert_allclose(got, _reference_attention(q, k, v, key_mask, scaled_bias), atol=2e-5)
  # The scale follows the logits: doubling Q and K multiplies the logits and the bias by 4 alike.
  q2, k2 = 2 * q, 2 * k
  got2 = dot_product_attention(jnp.asarray(q2), jnp.asarray(k2), jnp.asarray(v),
                               jnp.asarray(key_mask), scaled_bias=jnp.asarray(scaled_bias))
  np.testing.assert_allclose(got2, _reference_attention(q2, k2, v, key_mask, scaled_bias),
                             atol=2e-5)
  zero = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                               jnp.asarray(key_mask), scaled_bias=jnp.zeros_like(scaled_bias))
  np.testing.assert_array_equal(zero, dot_product_attention(
      jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(key_mask)))


def test_bias_time_factor_is_the_log_odds_of_masking():
  process = diffusion.MaskAndReplace(num_classes=16, num_timesteps=100)
  cum = schedules.cumulative_schedule("released", 16, 100)
  paint = jnp.ones((4, 3, 2))
  t = jnp.array([0, 10, 50, 99])
  got = np.asarray(paint_bias(process, paint, t))
  assert got.shape == (4, 1, 3, 2)
  # Index t + 1 of the cumulative tables is timestep t (index 0 is x0); f = log(1 + odds).
  masked = np.asarray(cum.mask, np.float64)[np.asarray(t) + 1]
  np.testing.assert_allclose(got[:, 0, 0, 0], np.log1p(masked / (1 - masked)), rtol=1e-4)
  assert np.all(np.diff(got[:, 0, 0, 0]) > 0) and got[0, 0, 0, 0] < 0.05 and got[-1, 0, 0, 0] > 5


# ------------------------------------------------------------------------- phrases and masks


def _word_tokenizer():
  return WordTokenizer.fit(["a small red circle to the left of a large red square"], max_length=16)


def test_word_phrases_map_to_every_occurrence():
  tok = _word_tokenizer()
  prompt = "a small red circle to the left of a large red square"  # [BOS] a small red circle ...
  assert paint_lib.phrase_positions(tok, prompt, "red circle") == [3, 4]
  assert paint_lib.phrase_positions(tok, prompt, "Red") == [3, 11]
  assert paint_lib.phrase_positions(tok, prompt, "large red square") == [10, 11, 12]


@pytest.mark.parametrize("phrase, message", [
    ("large square", "does not occur in the prompt"), ("red zebra", r"does not know: \['zebra'\]"),
    ("!!", "has no tokens"), ("square red", "does not occur")])
def test_bad_phrases_name_the_prompt_tokens(phrase, message):
  with pytest.raises(ValueError, match=message) as e:
    paint_lib.phrase_positions(_word_tokenizer(), "a small red circle", phrase)
  if "occur" in message:
    assert "['[BOS]', 'a', 'small', 'red', 'circle', '[EOS]']" in str(e.value)


@pytest.mark.reference
def test_clip_bpe_phrases_cover_multi_token_and_repeated_words(tmp_path):
  pytest.importorskip("transformers", reason="the CLIP tokenizer is transformers'")
  from test_clip_text import write_tiny_clip_tokenizer  # pylint: disable=import-outside-toplevel
  from vqd_jax.text.clip_tokenizer import CLIPTokenizerWrapper  # pylint: disable=import-outside-toplevel
  write_tiny_clip_tokenizer(tmp_path)
  tok = CLIPTokenizerWrapper.from_pretrained(tmp_path)
  prompt = "a red cat and a red zebra"
  ids = tok([prompt])[0][0]
  # "zebra" is not a merged word in the tiny vocabulary: BPE spells it z e b r a</w>.
  assert tok.tokens(prompt)[-7:-1] == ["red</w>", "z", "e", "b", "r", "a</w>"]
  tokens = tok.tokens(prompt)  # "and" is not merged either: a n d</w>
  red = [i for i, s in enumerate(tokens) if s == "red</w>"]
  assert len(red) == 2 and paint_lib.phrase_positions(tok, prompt, "red") == red
  zebra = paint_lib.phrase_positions(tok, prompt, "red zebra")
  assert zebra == list(range(red[1], red[1] + 6)) and ids[red[1] + 6] == tok.eos_id
  with pytest.raises(ValueError, match="does not occur"):
    paint_lib.phrase_positions(tok, prompt, "dog")


def test_masks_are_averaged_by_area_onto_the_grid(tmp_path):
  mask = np.zeros((32, 32), np.uint8)
  mask[:16, 8:24] = 255  # top half, middle two quarters of the width
  mask[16:, 0:2] = 128  # a grey sliver: 2 of every 4 pixel columns of grid column 0
  grid = paint_lib.mask_to_grid(paint_lib.load_mask(mask), 8, 8).reshape(8, 8)
  expected = np.zeros((8, 8), np.float32)
  expected[:4, 2:6] = 1.0
  expected[4:, 0] = 0.5 * 128 / 255
  np.testing.assert_allclose(grid, expected, atol=1e-6)
  Image.fromarray(mask).save(tmp_path / "m.png")
  np.testing.assert_allclose(paint_lib.mask_to_grid(paint_lib.load_mask(str(tmp_path / "m.png")),
                                                    8, 8).reshape(8, 8), expected, atol=1e-6)
  rgb = np.repeat(mask[..., None], 3, -1)
  np.testing.assert_allclose(paint_lib.load_mask(rgb), mask / 255.0, atol=1e-6)


def test_paint_weights_layout_and_errors():
  tok = _word_tokenizer()
  box = np.zeros((4, 4), bool)
  box[:2, :2] = True
  prompts, paint = ["a small red circle", "a large red square"], [{"red circle": box}, {}]
  w = paint_lib.paint_weights(tok, prompts, paint, 2, 2, weight=3.0, outside=0.0)
  assert w.shape == (2, 4, 16)
  np.testing.assert_array_equal(w[0][:, [3, 4]], [[3, 3], [0, 0], [0, 0], [0, 0]])
  assert w[0].sum() == 6 and not w[1].any()
  # Outside the mask the phrase's columns are pushed down: mask − outside · (1 − mask), times w.
  grey = np.zeros((4, 4), np.float32)
  grey[:2, :2], grey[:2, 2:] = 1.0, 0.5
  w = paint_lib.paint_weights(tok, prompts, [{"red circle": grey}, {}], 2, 2, weight=3.0,
                              outside=0.5)
  expected = 3.0 * np.array([1.0, 0.5 - 0.5 * 0.5, -0.5, -0.5])
  np.testing.assert_allclose(w[0][:, [3, 4]], np.stack([expected] * 2, 1))
  assert np.count_nonzero(w[0]) == 8 and not w[1].any()
  with pytest.raises(ValueError, match="paint_outside"):
    paint_lib.paint_weights(tok, prompts, paint, 2, 2, outside=-1.0)
  with pytest.raises(ValueError, match="empty on the 2x2 token grid"):
    paint_lib.paint_weights(tok, ["a red circle"], {"red": np.zeros((4, 4))}, 2, 2)
  with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
    paint_lib.paint_weights(tok, ["a red circle"], {"red": np.full((4, 4), 2.0)}, 2, 2)
  with pytest.raises(ValueError, match="one per prompt"):
    paint_lib.paint_weights(tok, ["a red circle"], [{}, {}], 2, 2)
  with pytest.raises(ValueError, match="paint_weight"):
    paint_lib.paint_weights(tok, ["a red circle"], {"red": box}, 2, 2, weight=-1.0)
  with pytest.raises(ValueError, match="not a file"):
    paint_lib.paint_weights(tok, ["a red circle"], {"red": "missing.png"}, 2, 2)


def test_guidance_scales_follow_the_strongest_mask():
  left = np.zeros((4, 4), np.float32)
  left[:, :2] = 1.0
  grey = np.full((4, 4), 0.5, np.float32)
  grey[2:, 2:] = 0.0
  got = paint_lib.guidance_scales([{"red": left, "circle": grey}, {}], 2, 2, 2, 3.0, 1.0)
  # Token grid cells (raster order): left column white, top-right grey 0.5, bottom-right unpainted.
  np.testing.assert_allclose(got, [[3.0, 2.0, 3.0, 1.0], [1.0] * 4])
  # Scale at the sampler's own guidance everywhere: eDiff-I's uniform guidance.
  np.testing.assert_allclose(paint_lib.guidance_scales({"red": left}, 1, 2, 2, 3.0, 3.0), 3.0)
  with pytest.raises(ValueError, match="unpainted_guidance must be a finite number"):
    paint_lib.guidance_scales({"red": left}, 1, 2, 2, 3.0, float("nan"))
  with pytest.raises(ValueError, match="is empty on the 2x2 token grid"):
    paint_lib.guidance_scales({"red": np.zeros((4, 4))}, 1, 2, 2, 3.0)


# ------------------------------------------------------------------- the model and the sampler


def test_per_token_guidance_is_the_closed_form_per_token():
  rng = np.random.default_rng(2)
  logits = rng.standard_normal((2, 2, 5, 7))
  lu, lc = (x - np.log(np.exp(x).sum(-1, keepdims=True)) for x in logits)  # [B, N, K] each
  scales = rng.uniform(0.0, 4.0, (2, 5))
  rows = jnp.asarray(np.concatenate([lu, lc]), jnp.float32)
  got = diffusion.prepare_log_x0(per_token_guidance(rows, jnp.asarray(scales, jnp.float32), 3.0),
                                 guidance_scale=3.0)
  guided = lu + scales[..., None] * (lc - lu)
  want = guided - np.log(np.exp(guided).sum(-1, keepdims=True))
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_guidance_of_one_at_every_token_is_the_unguided_sampler():
  model = Text2ImageTransformer(num_classes=8, height=4, width=4, num_layers=1, num_heads=2,
                                head_dim=8, cross_attention_dim=8, num_embeds_ada_norm=10)
  rng = np.random.default_rng(3)
  x = jnp.zeros((3, 16), jnp.int32)
  states = jnp.asarray(rng.standard_normal((3, 5, 8)), jnp.float32)
  params = model.init(jax.random.key(0), x, jnp.zeros(3, jnp.int32), states)["params"]
  gen = TokenGenerator(model, diffusion.MaskAndReplace(8, 10))
  cond, null = Conditioning(states), Conditioning(jnp.zeros_like(states))
  key, steps = jax.random.key(5), 10
  plain = gen.generate_tokens(params, cond, key, diffusion.SamplerConfig(num_steps=steps))
  # A scale large enough that guidance visibly moves this random model's draws.
  guided = diffusion.SamplerConfig(num_steps=steps, guidance_scale=1000.0)
  ones = gen.generate_tokens(params, cond, key, guided, null=null,
                             token_guidance=jnp.ones((3, 16)))
  np.testing.assert_array_equal(ones, plain)
  assert np.any(np.asarray(gen.generate_tokens(params, cond, key, guided, null=null)) != plain)
  with pytest.raises(ValueError, match="token_guidance needs guidance"):
    gen.generate_tokens(params, cond, key, diffusion.SamplerConfig(num_steps=steps),
                        token_guidance=jnp.ones((3, 16)))


def test_guidance_leaves_the_null_rows_unpainted():
  model = Text2ImageTransformer(num_classes=8, height=4, width=4, num_layers=2, num_heads=2,
                                head_dim=8, cross_attention_dim=8, num_embeds_ada_norm=10)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.integers(0, 9, (2, 16)), jnp.int32)
  states = jnp.asarray(rng.standard_normal((2, 5, 8)), jnp.float32)
  params = model.init(jax.random.key(0), x, jnp.zeros(2, jnp.int32), states)["params"]
  gen = TokenGenerator(model, diffusion.MaskAndReplace(8, 10))
  cond = Conditioning(states, paint=jnp.asarray(rng.uniform(0, 3, (2, 16, 5)), jnp.float32))
  null = Conditioning(jnp.zeros_like(states))
  both = gen.denoise(params, jnp.concatenate([x, x]), 9, stack_rows(null, cond))
  np.testing.assert_array_equal(both[:2], gen.denoise(params, x, 9, null))
  np.testing.assert_allclose(both[2:], gen.denoise(params, x, 9, cond), atol=1e-6)
  # Random N(0, 0.02) weights give cross-attention a small say, but a visible one.
  assert np.abs(both[2:] - gen.denoise(params, x, 9, Conditioning(states))).max() > 1e-5
  # A zero map is no paint at all.
  zero = Conditioning(states, paint=jnp.zeros((2, 16, 5)))
  np.testing.assert_array_equal(gen.denoise(params, x, 9, zero),
                                gen.denoise(params, x, 9, Conditioning(states)))


# -------------------------------------------------------------------------------- end to end


def test_pipeline_paint(tiny_run):
  pipe = VQDiffusionPipeline.from_run(tiny_run)
  h, w = pipe.image_size
  box = np.zeros((h, w), np.uint8)
  box[: h // 2, : w // 2] = 255
  prompts = ["a large red circle"] * 2
  kw = dict(num_inference_steps=4, guidance_scale=2.0, seed=3)
  plain = pipe.generate_tokens(prompts, **kw)
  off = pipe.generate_tokens(prompts, paint={"red circle": box}, paint_weight=0.0, **kw)
  np.testing.assert_array_equal(off, plain)
  # Four training steps leave the tokens nearly blind to the text (another prompt changes 2 of
  # 512), so the paint's effect is checked on the denoiser output the pipeline's map produces.
  weights = jnp.asarray(pipe.paint_weights(prompts, {"red circle": box}, 1.0))
  assert weights.shape == (2, 256, pipe.conditioner.tokenizer.max_length)
  ids, mask = pipe.tokenize(prompts)
  cond = pipe.conditioner.encode(pipe.params, jnp.asarray(ids), jnp.asarray(mask))
  x = jnp.full((2, 256), pipe.num_codes, jnp.int32)
  out = [pipe.generator.denoise(pipe.params["transformer"], x, 99, c)
         for c in (cond, cond.replace(paint=weights))]
  assert np.abs(out[1] - out[0]).max() > 1e-4
  with pytest.raises(ValueError, match="does not occur in the prompt"):
    pipe(["a large red circle"], paint={"blue square": box}, **kw)


def test_pipeline_guides_only_the_painted_tokens(tiny_run, monkeypatch):
  pipe = VQDiffusionPipeline.from_run(tiny_run)
  h, w = pipe.image_size
  box = np.zeros((h, w), np.uint8)
  box[: h // 2, : w // 2] = 255
  seen, generate = [], TokenGenerator.generate_tokens

  def spy(self, *args, token_guidance=None, **kw):
    seen.append(None)
    if token_guidance is not None:
      jax.debug.callback(lambda v: seen.__setitem__(-1, np.asarray(v)), token_guidance)
    return generate(self, *args, token_guidance=token_guidance, **kw)
  monkeypatch.setattr(TokenGenerator, "generate_tokens", spy)
  kw = dict(num_inference_steps=2, guidance_scale=2.0, paint={"red circle": box})
  pipe.generate_tokens(["a large red circle"], **kw)
  grid = np.zeros(pipe.token_grid)
  grid[: grid.shape[0] // 2, : grid.shape[1] // 2] = 1.0
  np.testing.assert_array_equal(seen[-1], [1.0 + grid.ravel()])  # 2 inside, 1 outside
  pipe.generate_tokens(["a large red circle"], unpainted_guidance=1.5, **kw)
  np.testing.assert_array_equal(seen[-1], [1.5 + 0.5 * grid.ravel()])
  # eDiff-I's uniform guidance, paint weight 0 and no guidance all leave the sampler as it was.
  for extra in (dict(unpainted_guidance=2.0), dict(paint_weight=0.0)):
    pipe.generate_tokens(["a large red circle"], **kw, **extra)
    assert seen[-1] is None
  pipe.generate_tokens(["a large red circle"], **dict(kw, guidance_scale=1.0))
  assert seen[-1] is None


@covers("sample --paint", "sample --paint-weight", "sample --paint-outside",
        "sample --unpainted-guidance")
def test_sample_command_paints_and_explains_bad_flags(tiny_run, tmp_path, monkeypatch):
  mask = tmp_path / "left.png"
  Image.fromarray(np.tile(np.array([255, 255, 0, 0], np.uint8), (4, 1))).save(mask)
  out = str(tmp_path / "out")
  args = ["--workdir", tiny_run, "--prompt", "a large red circle", "--num-samples", "2",
          "--steps", "4", "--out", out]
  # The sampler is called with the mask's levels, the weight and the outside factor (whose
  # effect on the denoiser is checked above).
  seen, generate = [], VQDiffusionPipeline.generate
  monkeypatch.setattr(VQDiffusionPipeline, "generate",
                      lambda self, *a, **kw: seen.append(kw) or generate(self, *a, **kw))
  assert sample.main(args + ["--paint", f"red circle={mask}", "--paint-weight", "2",
                             "--paint-outside", "0.5", "--unpainted-guidance", "1.5"]) == 0
  (kwargs,) = seen  # one call: both samples in one batch
  assert set(kwargs["paint"]) == {"red circle"}
  np.testing.assert_array_equal(kwargs["paint"]["red circle"], np.tile([1.0, 1.0, 0, 0], (4, 1)))
  assert (kwargs["paint_weight"], kwargs["paint_outside"]) == (2.0, 0.5)
  assert kwargs["unpainted_guidance"] == 1.5
  monkeypatch.undo()
  with open(os.path.join(out, "samples.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert records[0]["paint"] == {"red circle": str(mask)} and records[0]["paint_weight"] == 2.0
  assert records[0]["paint_outside"] == 0.5 and records[0]["unpainted_guidance"] == 1.5
  empty = tmp_path / "empty.png"
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(empty)
  for flags, message in [
      (["--paint", "red circle"], "PHRASE=MASK.png"),
      (["--paint", "red circle=nowhere.png"], "is not a file"),
      (["--paint", f"blue square={mask}"], "does not occur in the prompt"),
      (["--paint", f"red={empty}"], "is empty"),
      (["--paint", f"red={mask}", "--paint-weight", "-1"], "paint_weight must be"),
      (["--paint", f"red={mask}", "--paint-outside", "nan"], "paint_outside must be"),
      (["--paint", f"red={mask}", "--unpainted-guidance", "inf"], "unpainted_guidance must be")]:
    with pytest.raises(SystemExit, match=message):
      sample.main(args + flags)
