"""T5 tokenisation exactly as the checkpoint's own tokenizer does it.

The tokenizer is read with ``transformers.AutoTokenizer`` from the checkpoint's local files
(``tokenizer.json``, or ``spiece.model`` with sentencepiece installed); nothing is downloaded and no
repository code runs. A batch is padded to its longest prompt, ``</s>`` is appended to every prompt,
and with ``max_length`` a longer prompt is cut so that ``</s>`` still ends it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from vqd_jax.text.frozen import check_prompts

_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


class T5TokenizerWrapper:
  """Prompts -> ``(ids int32 [B, L], mask bool [B, L])``, L the longest prompt (capped at
  ``max_length`` when given).

  Attributes:
    tokenizer: the transformers tokenizer. max_length: the cap, or None.
    pad_id, eos_id: the padding and end-of-sequence ids.
  """

  def __init__(self, tokenizer: Any, max_length: int | None = None):
    if max_length is not None and max_length < 1:
      raise ValueError(f"max_length={max_length} leaves no room for a token; use None or >= 1.")
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
      raise ValueError("The T5 tokenizer defines no pad or eos token (<pad>, </s>); check its "
                       "tokenizer_config.json.")
    self.tokenizer = tokenizer
    self.max_length = max_length
    self.pad_id = int(tokenizer.pad_token_id)
    self.eos_id = int(tokenizer.eos_token_id)

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, max_length: int | None = None
                      ) -> "T5TokenizerWrapper":
    """Loads the tokenizer saved in a local checkpoint folder.

    Raises:
      FileNotFoundError: the folder or its tokenizer files are missing.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
      raise FileNotFoundError(f"T5 tokenizer folder {path!r} does not exist.")
    if not any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
      raise FileNotFoundError(
          f"No T5 tokenizer in {path!r}: expected {' or '.join(_TOKENIZER_FILES)} (save the "
          f"tokenizer into the folder with save_pretrained); found "
          f"{sorted(os.listdir(path))[:20]}.")
    try:
      from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError("T5 tokenisation needs transformers (pip install transformers).") from e
    return cls(AutoTokenizer.from_pretrained(path, local_files_only=True), max_length=max_length)

  @property
  def vocab_size(self) -> int:
    return len(self.tokenizer)

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenises a non-empty batch of prompts.

    Returns:
      ids: int32 ``[B, L]``: the prompt's tokens, ``</s>``, then pad ids.
      mask: bool ``[B, L]``: True through ``</s>``, False on padding.

    Raises:
      ValueError: an empty batch or a prompt that is not a string.
    """
    prompts = check_prompts(prompts)
    cut = self.max_length is not None
    out = self.tokenizer(prompts, padding="longest", truncation=cut, max_length=self.max_length,
                         return_tensors="np")
    return np.asarray(out["input_ids"], np.int32), np.asarray(out["attention_mask"], bool)
