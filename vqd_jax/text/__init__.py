"""Text side of text-to-image synthesis (pure core: imports nothing from training or data).

* ``Conditioner``: the one interface between prompts and the denoiser (tokenizer, encoder, the
  learned null embedding, caption dropout) returning a ``Conditioning`` (states, mask, pooled).
* ``WordTokenizer`` / ``TextEncoder``: word-level tokenizer fitted on the training captions and the
  small text transformer trained with the denoiser.
* ``CLIPTokenizerWrapper`` / ``CLIPTextEncoder``: the frozen pretrained CLIP text side.
* ``T5Encoder`` / ``T5TextEncoder``: the frozen pretrained T5 encoder (T5 v1.0, v1.1, FLAN-T5).
"""

from vqd_jax.text.clip import CLIPTextConfig, CLIPTextEncoder, clip_config_from_hf, encode_prompts
from vqd_jax.text.clip_tokenizer import CLIPTokenizerWrapper, load_clip_tokenizer
from vqd_jax.text.clip_preprocess import clip_preprocess
from vqd_jax.text.clip_vision import CLIPImageEncoder, CLIPVisionConfig, CLIPVisionEncoder
from vqd_jax.text.conditioner import SOURCES, Conditioner, Conditioning, stack_rows
from vqd_jax.text.conditioning import caption_drop_mask, drop_captions
from vqd_jax.text import embeddings
from vqd_jax.text.embeddings import EmbeddingSource
from vqd_jax.text.frozen import CLIPTextSource, load_encoder
from vqd_jax.text.encoder import TextEncoder, TextEncoderBlock
from vqd_jax.text.t5 import T5Encoder, T5EncoderConfig, T5TextEncoder, t5_config_from_hf
from vqd_jax.text.tokenizer import SPECIAL_TOKENS, WordTokenizer, split_words

__all__ = [
    "CLIPImageEncoder", "CLIPVisionConfig", "CLIPVisionEncoder", "clip_preprocess",
    "CLIPTextSource", "EmbeddingSource", "embeddings", "load_clip_tokenizer", "load_encoder",
    "CLIPTextConfig", "CLIPTextEncoder", "CLIPTokenizerWrapper", "Conditioner", "Conditioning",
    "SOURCES", "SPECIAL_TOKENS", "TextEncoder", "TextEncoderBlock", "WordTokenizer",
    "caption_drop_mask", "clip_config_from_hf", "drop_captions", "encode_prompts", "split_words",
    "stack_rows", "T5Encoder", "T5EncoderConfig", "T5TextEncoder", "t5_config_from_hf",
]
