"""Text side of text-to-image synthesis (pure core: imports nothing from training or data).

* ``Conditioner``: the one interface between prompts and the denoiser (tokenizer, encoder, the
  learned null embedding, caption dropout) returning a ``Conditioning`` (states, mask, pooled).
* ``WordTokenizer`` / ``TextEncoder``: word-level tokenizer fitted on the training captions and the
  small text transformer trained with the denoiser.
* ``CLIPTokenizerWrapper`` / ``CLIPTextEncoder``: the frozen pretrained CLIP text side.
"""

from vqd_jax.text.clip import CLIPTextConfig, CLIPTextEncoder, clip_config_from_hf, encode_prompts
from vqd_jax.text.clip_tokenizer import CLIPTokenizerWrapper
from vqd_jax.text.conditioner import SOURCES, Conditioner, Conditioning, stack_rows
from vqd_jax.text.conditioning import caption_drop_mask, drop_captions
from vqd_jax.text.encoder import TextEncoder, TextEncoderBlock
from vqd_jax.text.tokenizer import SPECIAL_TOKENS, WordTokenizer, split_words

__all__ = [
    "CLIPTextConfig", "CLIPTextEncoder", "CLIPTokenizerWrapper", "Conditioner", "Conditioning",
    "SOURCES", "SPECIAL_TOKENS", "TextEncoder", "TextEncoderBlock", "WordTokenizer",
    "caption_drop_mask", "clip_config_from_hf", "drop_captions", "encode_prompts", "split_words",
    "stack_rows",
]
