"""The autoregressive token model (pure: layers, text conditioning, nothing from training or data).

* :mod:`~vqd_jax.autoregressive.model`: :class:`ARTransformer`, a decoder-only transformer over
  image tokens in raster order with cross-attention to text (or, not causal, a grid-to-grid map).
* :mod:`~vqd_jax.autoregressive.sampling`: one jitted ``lax.scan`` over positions, with a
  key-value cache or full recomputation, guidance, temperature, top-k and top-p.
"""

from vqd_jax.autoregressive.model import (ARTransformer, TextConditionedBlock, TokenGridEmbedding,
                                          decoder_context)
from vqd_jax.autoregressive.sampling import (ARGenerator, ARSamplerConfig, filter_logits,
                                             guided_log_probs, sample_autoregressive)

__all__ = [
    "ARGenerator", "ARSamplerConfig", "ARTransformer", "TextConditionedBlock",
    "TokenGridEmbedding", "decoder_context", "filter_logits", "guided_log_probs", "sample_autoregressive",
]
