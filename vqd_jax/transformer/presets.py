"""Named sizes of the denoising transformer (written only here), and parameter counting.

``configs/diffusion.py`` reads its S, B and ithq layer and head sizes from :data:`PRESETS`, and so
do the benchmarks. Parameter counts (``count_params``, embeddings included; checked by
tests/test_transformer_model.py) against the published models:

=======  ======  =====  =====  ========  =====  =============  =========================================
preset   layers  width  heads  head dim  K      params         reference
=======  ======  =====  =====  ========  =====  =============  =========================================
tiny     2       32     2      16        16     55.3K          unit tests only
S        18      192    16     12        2887   17.4M          35.9M with the official 3×3 conv MLP
B        19      1024   16     64        2887   388.8M         388.8M (paper: 370M)
ithq     36      1408   16     88        4096   1359.3M        1359M (5.44 GB fp32 hub checkpoint)
=======  ======  =====  =====  ========  =====  =============  =========================================

VQ-Diffusion-S in the official code (``configs/cub200_s.yaml``) uses ``Conv_MLP`` (3×3 convolutions
over the 32×32 token grid, ×2 hidden). The S preset keeps the fc ×4 MLP of the diffusers layout (so
it exports to diffusers and ``bench sample`` can run it); the official layout is
``transformer_preset("S", mlp_type="conv", mlp_ratio=2)``, 35.9M parameters like the reference.
S and B use the 2887 codes of the taming f8 Gumbel VQ (after the official remapping) and CLIP's 512-d
text states; override ``num_classes`` / ``cross_attention_dim`` to match your own VQ-VAE and encoder.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqd_jax.transformer import fields as fields_lib
from vqd_jax.transformer.model import Text2ImageTransformer

_COMMON = dict(num_embeds_ada_norm=100, mlp_ratio=4, dropout=0.0)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(num_classes=16, height=4, width=4, num_layers=2, num_heads=2, head_dim=16,
                 cross_attention_dim=24, **_COMMON),
    "S": dict(num_classes=2887, height=32, width=32, num_layers=18, num_heads=16, head_dim=12,
              cross_attention_dim=512, **_COMMON),
    "B": dict(num_classes=2887, height=32, width=32, num_layers=19, num_heads=16, head_dim=64,
              cross_attention_dim=512, **_COMMON),
    "ithq": dict(num_classes=4096, height=32, width=32, num_layers=36, num_heads=16, head_dim=88,
                 cross_attention_dim=512, **_COMMON),
}


def transformer_preset(name: str, **overrides: Any) -> dict[str, Any]:
  """The ``Text2ImageTransformer`` fields of preset ``name`` (tiny, S, B, ithq), with overrides."""
  if name not in PRESETS:
    raise ValueError(f"Unknown transformer preset {name!r}; choose one of {sorted(PRESETS)}.")
  fields = dict(PRESETS[name])
  fields_lib.check_config_fields(overrides, Text2ImageTransformer, where="")
  fields.update(overrides)
  return fields


def abstract_params(fields: dict[str, Any], text_length: int = 77) -> Any:
  """The params of ``Text2ImageTransformer(**fields)`` as ShapeDtypeStructs (nothing allocated)."""
  model = Text2ImageTransformer(**fields)
  tokens = jax.ShapeDtypeStruct((1, model.num_tokens), jnp.int32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  text = jax.ShapeDtypeStruct((1, text_length, model.cross_attention_dim), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), tokens, t, text)
  return nn.meta.unbox(variables["params"])


def count_params(fields: dict[str, Any]) -> int:
  """Number of parameters of a ``Text2ImageTransformer(**fields)``, embeddings included."""
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract_params(fields)))
