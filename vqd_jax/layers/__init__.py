"""Layers shared by every model (pure: imports nothing else from vqd_jax).

* :mod:`~vqd_jax.layers.basic`: partitioned ``dense``/``embed``/``layer_norm`` constructors,
  ``ACTIVATION_AXES`` and ``approximate_gelu``.
* :mod:`~vqd_jax.layers.attention`: the one :class:`Attention` (self/cross, padding and causal
  masks, additive bias, key-value cache) and its dot-product and blocked helpers.
* :mod:`~vqd_jax.layers.fence`: ``gradient_fence`` (keeps deep backward passes linear on XLA CPU).
* :mod:`~vqd_jax.layers.mlp`: ``FeedForward`` (diffusers), ``ConvFeedForward`` (official
  ``Conv_MLP``), ``MixFeedForward`` (Mix-FFN).
* :mod:`~vqd_jax.layers.norms`: ``AdaLayerNorm``.
"""

from vqd_jax.layers.attention import (DIFFUSERS_PROJECTIONS, HF_PROJECTIONS, Attention,
                                      blocked_attention, causal_mask, dot_product_attention,
                                      project_context)
from vqd_jax.layers.basic import (ACTIVATION_AXES, DEFAULT_INIT_STDDEV, approximate_gelu,
                                  check_text_inputs, constant_init, dense, embed, layer_norm)
from vqd_jax.layers.fence import gradient_fence
from vqd_jax.layers.mlp import (ApproximateGELUProjection, ConvFeedForward, FeedForward,
                                GridFeedForward, MixFeedForward, depthwise_conv3x3)
from vqd_jax.layers.norms import AdaLayerNorm

__all__ = [
    "ACTIVATION_AXES", "AdaLayerNorm", "ApproximateGELUProjection", "Attention",
    "ConvFeedForward", "DEFAULT_INIT_STDDEV", "DIFFUSERS_PROJECTIONS", "FeedForward",
    "GridFeedForward", "HF_PROJECTIONS", "MixFeedForward", "approximate_gelu",
    "blocked_attention", "causal_mask", "check_text_inputs", "constant_init", "dense", "depthwise_conv3x3",
    "dot_product_attention", "embed", "gradient_fence", "layer_norm", "project_context",
]
