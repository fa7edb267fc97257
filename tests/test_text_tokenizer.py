"""WordTokenizer: fitting, encoding, truncation, unknown words, save/load."""

import json

import numpy as np
import pytest

from vqd_jax.text import SPECIAL_TOKENS, WordTokenizer, split_words

CAPTIONS = [
    "A small bird with a red crown.",
    "This bird has a RED breast, and a small beak!",
    "a bird",
]


def test_split_words_lowercases_and_drops_punctuation():
  assert split_words("A red-winged Bird, perched_on a branch!") == \
      ["a", "red", "winged", "bird", "perched", "on", "a", "branch"]
  assert split_words("Ökologie 2 Vögel") == ["ökologie", "2", "vögel"]
  assert split_words("  ...  ") == []


def test_fit_orders_vocab_by_frequency_then_alphabet():
  tok = WordTokenizer.fit(CAPTIONS)
  # Counts: a 5, bird 3, red 2, small 2, then 1 each: and beak breast crown has this with.
  assert tok.vocab == list(SPECIAL_TOKENS) + ["a", "bird", "red", "small", "and", "beak", "breast",
                                              "crown", "has", "this", "with"]
  assert tok.pad_id == 0 and tok.vocab[tok.unk_id] == "[UNK]"
  # Longest caption has 10 words, plus [BOS] and [EOS].
  assert tok.max_length == 12


def test_encoding_by_hand():
  tok = WordTokenizer.fit(CAPTIONS, max_length=8)
  ids, mask = tok(["A red bird.", ""])
  a, red, bird = (tok.vocab.index(w) for w in ("a", "red", "bird"))
  np.testing.assert_array_equal(ids, [[2, a, red, bird, 3, 0, 0, 0], [2, 3, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, ids != 0)
  assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == (2, 8)


def test_round_trip_decode():
  tok = WordTokenizer.fit(CAPTIONS)
  ids, _ = tok(CAPTIONS)
  assert tok.decode(ids) == [" ".join(split_words(c)) for c in CAPTIONS]


def test_too_long_prompts_keep_the_end_token_and_are_reported():
  tok = WordTokenizer.fit(CAPTIONS, max_length=5)
  prompts = ["a small bird with a red crown", "a bird"]
  ids, mask = tok(prompts)
  assert tok.decode(ids)[0] == "a small bird"
  assert ids[0, -1] == tok.eos_id and mask[0].all()
  assert tok.truncated(prompts) == [0]


def test_unknown_words_become_unk_and_are_reported():
  tok = WordTokenizer.fit(CAPTIONS)
  prompts = ["a blue bird with a yellow beak", "a bird"]
  ids, _ = tok(prompts)
  assert (ids[0] == tok.unk_id).sum() == 2
  assert tok.decode(ids)[0] == "a [UNK] bird with a [UNK] beak"
  assert tok.unknown_words(prompts) == ["blue", "yellow"]
  assert tok.unknown_words("a bird") == []


def test_min_count_and_max_vocab_size():
  assert WordTokenizer.fit(CAPTIONS, min_count=2).vocab[4:] == ["a", "bird", "red", "small"]
  assert WordTokenizer.fit(CAPTIONS, max_vocab_size=6).vocab[4:] == ["a", "bird"]
  with pytest.raises(ValueError, match="no room for words"):
    WordTokenizer.fit(CAPTIONS, max_vocab_size=4)


def test_save_load_round_trip(tmp_path):
  tok = WordTokenizer.fit(CAPTIONS, max_length=9)
  path = tmp_path / "tokenizer.json"
  tok.save(path)
  again = WordTokenizer.load(path)
  assert again.vocab == tok.vocab and again.max_length == 9
  for a, b in zip(tok(CAPTIONS + ["unknown words here"]), again(CAPTIONS + ["unknown words here"])):
    np.testing.assert_array_equal(a, b)


def test_bad_inputs_raise_clear_errors(tmp_path):
  path = tmp_path / "other.json"
  path.write_text(json.dumps({"vocab": ["x"]}))
  with pytest.raises(ValueError, match="not a saved WordTokenizer"):
    WordTokenizer.load(path)
  with pytest.raises(ValueError, match="special tokens"):
    WordTokenizer(["a", "b"], max_length=4)
  with pytest.raises(ValueError, match="at least 3"):
    WordTokenizer(list(SPECIAL_TOKENS), max_length=2)
  with pytest.raises(ValueError, match="no words"):
    WordTokenizer.fit(["...", ""])
  with pytest.raises(TypeError, match="strings"):
    WordTokenizer.fit(CAPTIONS)([1, 2])
