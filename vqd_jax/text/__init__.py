"""Text side of text-to-image synthesis (pure core: imports nothing from training or data).

* ``WordTokenizer``: word-level tokenizer fitted on training captions (saved as JSON with a run).
* ``TextEncoder``: small trainable text transformer, ``(ids, mask) -> states [B, L, D]``.
* ``TextEncoderProtocol``: ``encode(params, ids, mask) -> states``, the one interface the denoiser
  side relies on, so pretrained encoders (CLIP, T5) plug in the same way.
* ``NullEmbedding`` / ``drop_captions``: the learned empty caption for classifier-free guidance.
* ``CLIPTextEncoder`` / ``CLIPTokenizerWrapper``: the frozen pretrained CLIP text side of VQ-Diffusion.
"""

from vqd_jax.text.clip import CLIPTextConfig, CLIPTextEncoder, clip_config_from_hf, encode_prompts
from vqd_jax.text.clip_tokenizer import CLIPTokenizerWrapper
from vqd_jax.text.conditioning import (NullEmbedding, TextEncoderProtocol, caption_drop_mask,
                                       drop_captions)
from vqd_jax.text.encoder import TextEncoder, TextEncoderBlock
from vqd_jax.text.tokenizer import SPECIAL_TOKENS, WordTokenizer, split_words

__all__ = [
    "CLIPTextConfig", "CLIPTextEncoder", "CLIPTokenizerWrapper", "clip_config_from_hf",
    "encode_prompts",
    "NullEmbedding", "SPECIAL_TOKENS", "TextEncoder", "TextEncoderBlock", "TextEncoderProtocol",
    "WordTokenizer", "caption_drop_mask", "drop_captions", "split_words",
]
