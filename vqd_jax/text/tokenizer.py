"""A word-level tokenizer fitted on the training captions (for text encoders trained from scratch).

Text is lower-cased and split into runs of letters/digits; punctuation and whitespace only separate
words. Each prompt becomes ``[BOS] w1 ... wn [EOS] [PAD] ...`` of fixed length ``max_length``:

* too long: the words are cut to ``max_length - 2`` and [EOS] is kept as the last real token
  (``truncated(prompts)`` lists which prompts were cut);
* unknown words map to [UNK] (``unknown_words(prompts)`` lists them, e.g. to warn at sampling time).

The vocabulary is saved as JSON with the run, so a checkpoint always travels with its tokenizer.
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0..3; [PAD] must be 0 (padding with zeros is safe).
_FORMAT = "vqd_jax.WordTokenizer"
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script; "_" counts as punctuation.


def split_words(text: str) -> list[str]:
  """``"A red-winged Bird!"`` -> ``["a", "red", "winged", "bird"]``."""
  return _WORD.findall(text.lower())


class WordTokenizer:
  """Maps prompts to ``(ids [B, max_length] int32, mask [B, max_length] bool)``."""

  pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

  def __init__(self, vocab: Sequence[str], max_length: int):
    vocab = list(vocab)
    if tuple(vocab[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
      raise ValueError(f"The vocabulary must start with the special tokens {SPECIAL_TOKENS}.")
    if len(set(vocab)) != len(vocab):
      raise ValueError("The vocabulary has duplicate entries.")
    if max_length < 3:
      raise ValueError(f"max_length={max_length} leaves no room for a word between [BOS] and [EOS]; "
                       "use at least 3.")
    self.vocab = vocab
    self.max_length = int(max_length)
    self._ids = {word: i for i, word in enumerate(vocab)}

  @classmethod
  def fit(cls, captions: Iterable[str], max_length: int | None = None, min_count: int = 1,
          max_vocab_size: int | None = None) -> "WordTokenizer":
    """Builds the vocabulary from training captions.

    Args:
      captions: the training captions.
      max_length: total tokens per prompt including [BOS] and [EOS]; None = the longest caption's.
      min_count: words seen fewer times become [UNK].
      max_vocab_size: keep at most this many entries (special tokens included), most frequent first.
    """
    counts: collections.Counter[str] = collections.Counter()
    longest = 0
    for caption in captions:
      words = split_words(caption)
      counts.update(words)
      longest = max(longest, len(words))
    if not counts:
      raise ValueError("Cannot fit a tokenizer: the captions contain no words.")
    # Most frequent first, ties alphabetical, so fitting is deterministic.
    words = [w for w, c in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])) if c >= min_count]
    words = [w for w in words if w not in SPECIAL_TOKENS]
    vocab = list(SPECIAL_TOKENS) + words
    if max_vocab_size is not None:
      if max_vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"max_vocab_size={max_vocab_size} leaves no room for words beyond the "
                         f"{len(SPECIAL_TOKENS)} special tokens.")
      vocab = vocab[:max_vocab_size]
    return cls(vocab, max_length if max_length is not None else max(longest + 2, 3))

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def __call__(self, prompts: Sequence[str] | str) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes a batch; returns ids [B, max_length] int32 and mask [B, max_length] bool."""
    prompts = self._as_list(prompts)
    ids = np.full((len(prompts), self.max_length), self.pad_id, np.int32)
    for row, prompt in enumerate(prompts):
      words = split_words(prompt)[:self.max_length - 2]
      tokens = [self.bos_id] + [self._ids.get(w, self.unk_id) for w in words] + [self.eos_id]
      ids[row, :len(tokens)] = tokens
    # [PAD] only ever follows [EOS], so the real tokens are exactly the non-zero ids.
    return ids, ids != self.pad_id

  def decode(self, ids: np.ndarray) -> list[str]:
    """ids [B, L] -> the words between [BOS] and [EOS], space-joined ([UNK] shown as such)."""
    out = []
    for row in np.asarray(ids).reshape(-1, np.shape(ids)[-1]):
      words = []
      for i in row.tolist():
        if i == self.eos_id:
          break
        if i not in (self.pad_id, self.bos_id):
          words.append(self.vocab[i])
      out.append(" ".join(words))
    return out

  def tokens(self, prompt: str) -> list[str]:
    """The prompt's tokens as strings, [BOS] to [EOS] (for messages)."""
    ids, mask = self([prompt])
    return [self.vocab[i] for i in ids[0][mask[0]].tolist()]

  def unknown_words(self, prompts: Sequence[str] | str) -> list[str]:
    """Sorted distinct words of ``prompts`` that will be read as [UNK]."""
    return sorted({w for p in self._as_list(prompts) for w in split_words(p) if w not in self._ids})

  def truncated(self, prompts: Sequence[str] | str) -> list[int]:
    """Indices of prompts with more than ``max_length - 2`` words (their tail is dropped)."""
    return [i for i, p in enumerate(self._as_list(prompts))
            if len(split_words(p)) > self.max_length - 2]

  def save(self, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
      json.dump({"format": _FORMAT, "version": 1, "max_length": self.max_length,
                 "vocab": self.vocab}, f, ensure_ascii=False, indent=0)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "WordTokenizer":
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
      raise ValueError(f"{os.fspath(path)!r} is not a saved WordTokenizer (format {_FORMAT!r}).")
    return cls(data["vocab"], data["max_length"])

  @staticmethod
  def _as_list(prompts: Sequence[str] | str) -> list[str]:
    if isinstance(prompts, str):
      return [prompts]
    prompts = list(prompts)
    if not all(isinstance(p, str) for p in prompts):
      raise TypeError("Prompts must be strings.")
    return prompts

  def __repr__(self) -> str:
    return f"WordTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"
