"""The VQ-Diffusion denoising transformer (pure core: imports nothing from training or data).

``Text2ImageTransformer(**transformer_preset("B"))(x_t [B, N], t [B], text_states [B, L, Dt])``
returns log p(x0 | x_t) as ``[B, N, K]`` float32. Parameter names follow diffusers
``Transformer2DModel``; conversion lives in ``vqd_jax.interop.transformer``.
"""

from vqd_jax.transformer.attention import Attention, dot_product_attention
from vqd_jax.transformer.layers import AdaLayerNorm, FeedForward, LatentImageEmbedding, approximate_gelu
from vqd_jax.transformer.model import Text2ImageTransformer, TransformerBlock
from vqd_jax.transformer.presets import PRESETS, abstract_params, count_params, transformer_preset

__all__ = [
    "AdaLayerNorm", "Attention", "FeedForward", "LatentImageEmbedding", "PRESETS",
    "Text2ImageTransformer", "TransformerBlock", "abstract_params", "approximate_gelu",
    "count_params", "dot_product_attention", "transformer_preset",
]
