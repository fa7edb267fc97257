"""CLIP tokenisation as VQ-Diffusion does it: fixed length, EOT kept when a prompt is cut.

The BPE itself is ``transformers.CLIPTokenizer`` built from the checkpoint's own local files
(``vocab.json`` + ``merges.txt``, or ``tokenizer.json``); nothing is downloaded. On top of it:

* every row is ``[SOT] text [EOT] pad ...`` of exactly ``max_length`` (77) ids;
* a prompt that does not fit is cut so that EOT still takes the last slot, as the official
  ``clip.tokenize(truncate=True)`` does (diffusers slices the ids and loses EOT);
* padding uses the tokenizer's pad id (the VQ-Diffusion converter sets ``pad_token="!"``, id 0, which
  equals the official zero padding); a tokenizer without a pad token pads with 0 like the official code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

_OFFICIAL_PAD_ID = 0
# A text tower trained by the contrastive stage keeps its word tokenizer under this name (not
# tokenizer.json, which transformers would read as its own tokenizer format).
WORD_TOKENIZER_FILE = "word_tokenizer.json"


def load_clip_tokenizer(path: str | os.PathLike, max_length: int | None = None):
  """The tokenizer of a CLIP text folder: its ``word_tokenizer.json`` (a tower trained by
  ``configs/clip.py``) when present, else CLIP's BPE (:class:`CLIPTokenizerWrapper`).

  ``max_length``: ids per prompt (None: the word tokenizer's own, or CLIP's 77).
  """
  path = os.fspath(path)
  word_file = os.path.join(path, WORD_TOKENIZER_FILE)
  if os.path.isfile(word_file):
    from vqd_jax.text.tokenizer import WordTokenizer  # pylint: disable=import-outside-toplevel
    word = WordTokenizer.load(word_file)
    return word if max_length is None else WordTokenizer(word.vocab, max_length)
  return CLIPTokenizerWrapper.from_pretrained(path, max_length=max_length or 77)


def _tokenizer_dir(path: str | os.PathLike) -> str:
  """``path`` when it holds tokenizer files, else its ``tokenizer/`` sub-folder (pipeline root)."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"CLIP tokenizer folder {path!r} does not exist.")
  for candidate in (path, os.path.join(path, "tokenizer")):
    has_bpe = all(os.path.exists(os.path.join(candidate, f)) for f in ("vocab.json", "merges.txt"))
    if has_bpe or os.path.exists(os.path.join(candidate, "tokenizer.json")):
      return candidate
  present = sorted(os.listdir(path))
  raise FileNotFoundError(
      f"No CLIP tokenizer files in {path!r} (nor in its tokenizer/ sub-folder): expected vocab.json "
      f"and merges.txt (or tokenizer.json); found {present[:20]}.")


class CLIPTokenizerWrapper:
  """Turns prompts into fixed-length CLIP ids and a validity mask.

  Attributes:
    max_length: ids per prompt (CLIP's context, 77).
    bos_id, eos_id, pad_id: the start, end-of-text and padding ids.
  """

  def __init__(self, tokenizer: Any, max_length: int = 77):
    """``tokenizer``: a HF ``CLIPTokenizer`` (anything with ``__call__(texts, add_special_tokens=False)``
    returning ``input_ids`` and ``bos_token_id``/``eos_token_id``/``pad_token_id`` attributes)."""
    if max_length < 2:
      raise ValueError(f"max_length={max_length} leaves no room for the start and end tokens; use 77.")
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
      raise ValueError("The CLIP tokenizer defines no bos/eos token (<|startoftext|>/<|endoftext|>); "
                       "check its tokenizer_config.json.")
    self.tokenizer = tokenizer
    self.max_length = int(max_length)
    self.bos_id = int(tokenizer.bos_token_id)
    self.eos_id = int(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id
    self.pad_id = _OFFICIAL_PAD_ID if pad is None else int(pad)

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, max_length: int = 77) -> "CLIPTokenizerWrapper":
    """Loads the tokenizer from a local folder (or a diffusers pipeline root with ``tokenizer/``)."""
    directory = _tokenizer_dir(path)
    try:
      from transformers import CLIPTokenizer  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError("CLIP tokenisation needs transformers (pip install transformers).") from e
    return cls(CLIPTokenizer.from_pretrained(directory, local_files_only=True), max_length=max_length)

  @property
  def vocab_size(self) -> int:
    return len(self.tokenizer)

  def tokens(self, prompt: str) -> list[str]:
    """The prompt's BPE tokens as strings, start to end of text (for messages)."""
    ids, mask = self([prompt])
    return list(self.tokenizer.convert_ids_to_tokens(ids[0][mask[0]].tolist()))

  def __call__(self, prompts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenises a prompt or a batch of prompts.

    Returns:
      ids: int32 ``[B, max_length]``: SOT, up to ``max_length - 2`` text tokens, EOT, then pad ids.
      mask: bool ``[B, max_length]``: True from SOT through EOT, False on padding.
    """
    if isinstance(prompts, str):
      prompts = [prompts]
    prompts = list(prompts)
    bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
    if bad:
      raise TypeError(f"Prompts must be strings; got {bad[:5]}.")
    ids = np.full((len(prompts), self.max_length), self.pad_id, np.int32)
    mask = np.zeros((len(prompts), self.max_length), bool)
    if not prompts:
      return ids, mask
    text_ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    room = self.max_length - 2
    for row, tokens in enumerate(text_ids):
      tokens = [self.bos_id, *tokens[:room], self.eos_id]
      ids[row, :len(tokens)] = tokens
      mask[row, :len(tokens)] = True
    return ids, mask
