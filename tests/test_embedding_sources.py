"""Several conditioning sources: the text encoder plus precomputed T5 / CLIP text / CLIP image
embeddings, each projected into its own segment of the context and dropped independently."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqd_jax.text import SPECIAL_TOKENS, Conditioner, EmbeddingSource, TextEncoder, WordTokenizer
from vqd_jax.text import embeddings as emb

MAX_LEN, WIDTH = 6, 16
SOURCES = (EmbeddingSource("t5", width=12, length=5, drop_rate=0.25),
           EmbeddingSource("clip_text", width=10, length=4, pooled_width=8, drop_rate=0.2),
           EmbeddingSource("clip_image", pooled_width=6, drop_rate=0.9))
TEXT_RATE = 0.1


@pytest.fixture(scope="module")
def setup():
  tokenizer = WordTokenizer(list(SPECIAL_TOKENS) + ["red", "blue", "cat", "dog"], MAX_LEN)
  encoder = TextEncoder(vocab_size=tokenizer.vocab_size, max_length=MAX_LEN, width=WIDTH,
                        num_layers=1, num_heads=2)
  cond = Conditioner(tokenizer, encoder, embeddings=SOURCES)
  ids, mask = cond.tokenize(["red cat", "blue dog"])
  params = nn.meta.unbox(cond.init(jax.random.key(0), jax.random.key(1), ids, mask))
  return cond, params


def _entries(batch, seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for s in SOURCES:
    if s.has_states:
      out[f"{s.name}_states"] = rng.normal(size=(batch, s.length, s.width)).astype(np.float32)
      out[f"{s.name}_mask"] = np.arange(s.length)[None] < rng.integers(1, s.length + 1, (batch, 1))
    if s.has_pooled:
      out[f"{s.name}_pooled"] = rng.normal(size=(batch, s.pooled_width)).astype(np.float32)
  return out


def _segments(cond):
  """``{name: slice}`` of each source's context positions (text first, null token last)."""
  out, start = {"text": slice(0, cond.length)}, cond.length
  for s in cond.embeddings:
    out[s.name] = slice(start, start + s.context_length)
    start += s.context_length
  return out


def test_context_is_the_projected_sources_then_the_null_token(setup):
  cond, params = setup
  ids, mask = cond.tokenize(["red cat", "blue dog dog"])
  given = _entries(2)
  out = cond.encode(params, ids, mask, given)
  assert cond.context_length == MAX_LEN + 5 + 4 + 1 + 1 and cond.pooled_width == 8 + 6
  assert out.states.shape == (2, cond.context_length, WIDTH) and out.pooled.shape == (2, 14)
  seg = _segments(cond)
  text_only = cond.encoder.apply({"params": params["text_encoder"]}, ids, mask)
  np.testing.assert_array_equal(out.states[:, seg["text"]], text_only)
  for s in SOURCES:  # numpy float64 reference of each projection
    p = params["embeddings"][s.name]["proj"]
    x = given[f"{s.name}_states"] if s.has_states else given[f"{s.name}_pooled"][:, None]
    want = x.astype(np.float64) @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"])
    np.testing.assert_allclose(out.states[:, seg[s.name]], want, rtol=1e-5, atol=1e-5)
    if s.has_states:
      np.testing.assert_array_equal(out.mask[:, seg[s.name]], given[f"{s.name}_mask"])
  np.testing.assert_array_equal(out.states[:, -1], np.broadcast_to(params["embeddings"][
      "context_null"][0], (2, WIDTH)))
  np.testing.assert_array_equal(out.pooled, np.concatenate(
      [given["clip_text_pooled"], given["clip_image_pooled"]], 1))


def test_a_source_not_given_reads_as_its_null(setup):
  cond, params = setup
  ids, mask = cond.tokenize(["red cat"])
  given = {k: v for k, v in _entries(1).items() if not k.startswith("clip_image")}
  out = cond.encode(params, ids, mask, given)
  seg = _segments(cond)["clip_image"]
  np.testing.assert_array_equal(out.states[0, seg], params["embeddings"]["clip_image"]["null_states"])
  np.testing.assert_array_equal(out.pooled[0, 8:], params["embeddings"]["clip_image"]["null_pooled"])
  # Image only: every text source is its null, the image is real.
  image_only = cond.encode(params, ids, mask, {"clip_image_pooled": _entries(1)["clip_image_pooled"]},
                           use_text=False)
  null = cond.null(params, 1)
  for name in ("text", "t5", "clip_text"):
    s = _segments(cond)[name]
    np.testing.assert_array_equal(image_only.states[:, s], null.states[:, s])
  assert not np.allclose(image_only.states[:, seg], null.states[:, seg])


def test_sources_drop_independently_at_their_rates(setup):
  """Chi-square on the 2^4 joint drop patterns (text, t5, clip_text, clip_image)."""
  cond, params = setup
  batch = 20_000
  ids, mask = (np.repeat(x, batch, 0) for x in cond.tokenize(["red cat"]))
  given = {k: np.repeat(v, batch, 0) for k, v in _entries(1).items()}
  full = jax.jit(lambda: cond.encode(params, ids, mask, given))()
  null = cond.null(params, batch)
  dropped = jax.jit(lambda k: cond.drop(k, full, null, TEXT_RATE))(jax.random.key(7))
  seg = _segments(cond)
  pattern = []
  for name in ("text", "t5", "clip_text", "clip_image"):
    is_null = np.all(np.asarray(dropped.states[:, seg[name]]) == np.asarray(null.states[:, seg[name]]),
                     axis=(1, 2))
    is_real = np.all(np.asarray(dropped.states[:, seg[name]]) == np.asarray(full.states[:, seg[name]]),
                     axis=(1, 2))
    assert np.all(is_null ^ is_real)  # a segment is exactly its null or exactly the real one
    pattern.append(is_null)
  pattern = np.stack(pattern, 1)
  rates = [TEXT_RATE] + [s.drop_rate for s in SOURCES]
  observed = {p: 0 for p in itertools.product((False, True), repeat=4)}
  for row in map(tuple, pattern):
    observed[row] += 1
  chi2 = 0.0
  for p, count in observed.items():
    expected = batch * np.prod([r if d else 1 - r for d, r in zip(p, rates)])
    chi2 += (count - expected) ** 2 / expected
  assert chi2 < 37.7  # chi-square, 15 degrees of freedom, p = 0.001
  # Pooled segments drop with their sources; the null token is never dropped.
  img = pattern[:, 3]
  np.testing.assert_array_equal(np.asarray(dropped.pooled[img, 8:]), np.asarray(null.pooled[img, 8:]))
  np.testing.assert_array_equal(np.asarray(dropped.pooled[~img, 8:]), np.asarray(full.pooled[~img, 8:]))
  all_dropped = pattern.all(1)
  assert all_dropped.sum() > 0  # the unconditional branch of guidance, exactly
  np.testing.assert_array_equal(np.asarray(dropped.states[all_dropped]),
                                np.asarray(null.states[all_dropped]))
  np.testing.assert_array_equal(np.asarray(dropped.pooled[all_dropped]),
                                np.asarray(null.pooled[all_dropped]))


def test_wrong_width_or_partial_entries_are_named(setup):
  cond, params = setup
  ids, mask = cond.tokenize(["red cat"])
  given = _entries(1)
  given["t5_states"] = np.zeros((1, 5, 13), np.float32)
  with pytest.raises(ValueError, match=r"t5_states has shape \(1, 5, 13\).*expects \(1, 5, 12\)"):
    cond.encode(params, ids, mask, given)
  given = {"clip_text_states": _entries(1)["clip_text_states"]}
  with pytest.raises(ValueError, match="clip_text.*clip_text_mask"):
    cond.encode(params, ids, mask, given)
  with pytest.raises(ValueError, match="Unknown embedding source 'siglip'"):
    EmbeddingSource("siglip", width=4, length=4)


def test_pad_to_length_cuts_or_pads_with_masked_zeros():
  states, mask = np.ones((2, 3, 4)), np.array([[1, 1, 0], [1, 1, 1]], bool)
  padded, pmask = emb.pad_to_length(states, mask, 5)
  assert padded.shape == (2, 5, 4) and not padded[:, 3:].any() and not pmask[:, 3:].any()
  cut, cmask = emb.pad_to_length(states, mask, 2)
  assert cut.shape == (2, 2, 4) and cmask.all()
