"""The VQ-Diffusion denoising transformer (pure core: imports nothing from training or data).

``Text2ImageTransformer(**transformer_preset("B"))(x_t [B, N], t [B], text_states [B, L, Dt])``
returns log p(x0 | x_t) as ``[B, N, K]`` float32. Parameter names follow diffusers
``Transformer2DModel``; conversion lives in ``vqd_jax.interop.transformer``. Its layers (attention,
MLPs, AdaLN) come from :mod:`vqd_jax.layers`.
"""

from vqd_jax.transformer.embedding import LatentImageEmbedding
from vqd_jax.transformer.model import MLP_TYPES, Text2ImageTransformer, TransformerBlock
from vqd_jax.transformer.presets import PRESETS, abstract_params, count_params, transformer_preset

__all__ = [
    "LatentImageEmbedding", "MLP_TYPES", "PRESETS", "Text2ImageTransformer", "TransformerBlock",
    "abstract_params", "count_params", "transformer_preset",
]
