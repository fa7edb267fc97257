"""A random-weight diffusers VQ-Diffusion pipeline folder, built offline (benchmarks and tests).

``save_random_pipeline(directory, RandomPipelineSizes(...))`` writes the same layout as
``microsoft/vq-diffusion-ithq`` (``vqvae/``, ``transformer/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``, ``learned_classifier_free_sampling_embeddings/``, ``model_index.json``) with
random weights. Nothing is downloaded: the CLIP tokenizer is a small byte-level BPE written here
(every byte symbol plus whole-word merges for a handful of words, "!" as id 0 and pad token like the
VQ-Diffusion converter), so the text encoder's cost is that of CLIP at the chosen width and depth,
only its embedding table is smaller. Needs torch, diffusers and transformers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from vqd_jax.transformer.presets import PRESETS

_S = PRESETS["S"]
TOKENIZER_WORDS = ("a", "photo", "of", "the", "cat", "dog", "red", "blue", "large", "small",
                   "circle", "square", "on", "beach", "sky")


@dataclasses.dataclass(frozen=True)
class RandomPipelineSizes:
  """Sizes of the random pipeline; the defaults are VQ-Diffusion-S with ITHQ's VQ and CLIP B/32.

  Attributes:
    num_codes: K, VQ codebook size (the transformer has K + 1 token classes).
    token_side: side of the token grid (32 -> 1024 tokens).
    num_layers, num_heads, head_dim: denoising transformer (default: the S preset's).
    num_timesteps: T of the scheduler and rows of the AdaLN timestep table.
    text_width, text_layers, text_heads: the CLIP text transformer (B/32: 512, 12, 8).
    vq_channels: VQ ``block_out_channels``; ``len - 1`` halvings from image to token grid.
    vq_layers_per_block, vq_embed_dim, vq_latent_channels, vq_norm_groups: the rest of the VQ.
    learnable_null: whether the null embedding is learned (ITHQ) or CLIP("").
    perturb_norms: add noise to every norm scale/bias (identity at init would hide a swap).
  """
  num_codes: int = 4096
  token_side: int = 32
  num_layers: int = _S["num_layers"]
  num_heads: int = _S["num_heads"]
  head_dim: int = _S["head_dim"]
  num_timesteps: int = 100
  text_width: int = 512
  text_layers: int = 12
  text_heads: int = 8
  vq_channels: Sequence[int] = (64, 128, 256, 512)
  vq_layers_per_block: int = 2
  vq_embed_dim: int = 128
  vq_latent_channels: int = 256
  vq_norm_groups: int = 32
  learnable_null: bool = True
  perturb_norms: bool = False

  @property
  def image_side(self) -> int:
    return self.token_side * 2 ** (len(self.vq_channels) - 1)


def _byte_symbols() -> list[str]:
  """The byte -> printable-symbol table of GPT-2/CLIP BPE, in CLIP's vocabulary order ("!" first)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def tiny_clip_vocabulary(words: Sequence[str] = TOKENIZER_WORDS) -> tuple[dict[str, int], list[str]]:
  """``(vocab, merges)`` of a CLIP-style BPE: all byte symbols (plain and word-final ``</w>``),
  left-to-right merges that build each of ``words`` whole, then the two special tokens."""
  symbols = _byte_symbols()
  tokens = symbols + [s + "</w>" for s in symbols]
  merges: list[str] = []
  for word in words:
    pieces = list(word)
    pieces[-1] += "</w>"
    merged = pieces[0]
    for piece in pieces[1:]:
      rule = f"{merged} {piece}"
      if rule not in merges:
        merges.append(rule)
        tokens.append(merged + piece)
      merged += piece
  tokens += ["<|startoftext|>", "<|endoftext|>"]
  return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}, merges


def build_random_pipeline(sizes: RandomPipelineSizes = RandomPipelineSizes(), seed: int = 0):
  """A ``diffusers`` ``VQDiffusionPipeline`` with random weights (eval mode, float32, CPU)."""
  # pylint: disable=import-outside-toplevel
  import torch
  import transformers
  from diffusers import Transformer2DModel, VQDiffusionPipeline, VQDiffusionScheduler, VQModel
  from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import (
      LearnedClassifierFreeSamplingEmbeddings)
  # pylint: enable=import-outside-toplevel

  torch.manual_seed(seed)
  vocab, merges = tiny_clip_vocabulary()
  tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges],
                                         pad_token="!",
                                         model_max_length=77)
  text_config = transformers.CLIPTextConfig(
      vocab_size=len(vocab), hidden_size=sizes.text_width, intermediate_size=4 * sizes.text_width,
      num_hidden_layers=sizes.text_layers, num_attention_heads=sizes.text_heads,
      max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=vocab["<|startoftext|>"],
      eos_token_id=vocab["<|endoftext|>"], pad_token_id=0)
  text_encoder = transformers.CLIPTextModel(text_config)
  levels = len(sizes.vq_channels)
  vqvae = VQModel(
      in_channels=3, out_channels=3, block_out_channels=tuple(sizes.vq_channels),
      down_block_types=("DownEncoderBlock2D",) * (levels - 1) + ("AttnDownEncoderBlock2D",),
      up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * (levels - 1),
      layers_per_block=sizes.vq_layers_per_block, latent_channels=sizes.vq_latent_channels,
      num_vq_embeddings=sizes.num_codes, vq_embed_dim=sizes.vq_embed_dim,
      norm_num_groups=sizes.vq_norm_groups, sample_size=sizes.image_side)
  transformer = Transformer2DModel(
      num_attention_heads=sizes.num_heads, attention_head_dim=sizes.head_dim,
      num_layers=sizes.num_layers, num_vector_embeds=sizes.num_codes + 1,
      sample_size=sizes.token_side, num_embeds_ada_norm=sizes.num_timesteps,
      activation_fn="geglu-approximate", attention_bias=True,
      cross_attention_dim=sizes.text_width, norm_type="ada_norm")
  null = LearnedClassifierFreeSamplingEmbeddings(
      learnable=sizes.learnable_null, hidden_size=sizes.text_width if sizes.learnable_null else None,
      length=77 if sizes.learnable_null else None)
  with torch.no_grad():
    if sizes.learnable_null:
      # Scaled like L2-normalised CLIP states (unit norm per token).
      null.embeddings.copy_(torch.randn_like(null.embeddings) / np.sqrt(sizes.text_width))
    # diffusers initialises the VQ codebook in [-1/K, 1/K]: every code would decode to nearly the
    # same image. Spread the codes so decoding exercises the codebook lookup.
    vqvae.quantize.embedding.weight.normal_()
    if sizes.perturb_norms:
      for module in (text_encoder, vqvae, transformer):
        for name, param in module.named_parameters():
          if "norm" in name:
            param.add_(0.2 * torch.randn_like(param))
  scheduler = VQDiffusionScheduler(num_vec_classes=sizes.num_codes + 1,
                                   num_train_timesteps=sizes.num_timesteps)
  pipe = VQDiffusionPipeline(
      vqvae=vqvae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
      transformer=transformer.eval(), scheduler=scheduler,
      learned_classifier_free_sampling_embeddings=null.eval())
  pipe.set_progress_bar_config(disable=True)
  return pipe


def save_random_pipeline(directory: str | os.PathLike,
                         sizes: RandomPipelineSizes = RandomPipelineSizes(), seed: int = 0):
  """Builds the random pipeline, ``save_pretrained``s it to ``directory`` and returns it."""
  pipe = build_random_pipeline(sizes, seed)
  pipe.save_pretrained(os.fspath(directory), safe_serialization=True)
  return pipe
