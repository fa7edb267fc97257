"""The CLIP image tower in Flax, laid out like Hugging Face's ``CLIPVisionModelWithProjection``.

Submodule names follow the HF checkpoint keys (``vision_model.embeddings.patch_embedding``,
``vision_model.pre_layrnorm`` (sic), ``vision_model.encoder.layers.{i}.self_attn.q_proj``,
``vision_model.post_layernorm``, ``visual_projection``) so that
:func:`vqd_jax.interop.state_dict.state_dict_to_params` converts checkpoints by name; the blocks are
the text tower's (:mod:`vqd_jax.text.clip`) without the causal mask.

  encoder = CLIPImageEncoder.from_pretrained("clip-vit/")
  embeds = encoder.encode_images(uint8_images)        # float32 [B, projection_dim]

Shapes: B batch, S image side (``image_size``), P patches ``(S // patch_size)**2``, D hidden_size,
E projection_dim.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqd_jax.layers import DEFAULT_INIT_STDDEV, dense, embed, layer_norm
from vqd_jax.text.clip import ACTIVATIONS, CLIPEncoder
from vqd_jax.text.clip_preprocess import CLIPImageProcessing, clip_preprocess, load_processing

_HF_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, image_size=224, patch_size=32, num_channels=3,
                    hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=512)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """The fields of a HF ``CLIPVisionConfig`` (plus the projection width) that shape the tower."""
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  image_size: int = 224
  patch_size: int = 32
  num_channels: int = 3
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  projection_dim: int = 512

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  def to_hf(self) -> dict[str, Any]:
    """A ``CLIPVisionModelWithProjection`` ``config.json`` dict."""
    return {"architectures": ["CLIPVisionModelWithProjection"], "model_type": "clip_vision_model",
            **dataclasses.asdict(self)}


def _square_side(value: Any, what: str) -> int:
  """HF allows ``image_size``/``patch_size`` as ``[h, w]``; the tower supports square ones."""
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"CLIP vision config {what}={value!r}: only square sizes are supported.")
    value = value[0]
  return int(value)


def clip_vision_config_from_hf(config_dict: Mapping[str, Any]) -> CLIPVisionConfig:
  """Reads a ``CLIPVisionModelWithProjection`` ``config.json`` dict, or a full ``CLIPModel``'s
  (its ``vision_config`` with the top-level ``projection_dim``, which sizes ``visual_projection``).
  Missing keys take HF's ``CLIPVisionConfig`` defaults (openai ViT-B/32)."""
  if isinstance(config_dict.get("vision_config"), Mapping):
    vision = dict(config_dict["vision_config"])
    if config_dict.get("projection_dim") is not None:
      vision["projection_dim"] = config_dict["projection_dim"]
    config_dict = vision
  values = {k: config_dict.get(k) for k in _HF_DEFAULTS}
  values = {k: v if v is not None else _HF_DEFAULTS[k] for k, v in values.items()}
  values["image_size"] = _square_side(values["image_size"], "image_size")
  values["patch_size"] = _square_side(values["patch_size"], "patch_size")
  if values["hidden_act"] not in ACTIVATIONS:
    raise ValueError(f"CLIP vision config hidden_act={values['hidden_act']!r} is not supported; "
                     f"expected one of {sorted(ACTIVATIONS)}.")
  if values["hidden_size"] % values["num_attention_heads"]:
    raise ValueError(f"CLIP vision config hidden_size={values['hidden_size']} is not divisible by "
                     f"num_attention_heads={values['num_attention_heads']}.")
  if values["patch_size"] > values["image_size"]:
    raise ValueError(f"CLIP vision config patch_size={values['patch_size']} exceeds "
                     f"image_size={values['image_size']}.")
  return CLIPVisionConfig(**values)


class CLIPVisionEmbeddings(nn.Module):
  """[CLS] + patch embeddings + learned positions: pixels ``[B, S, S, C]`` -> ``[B, 1+P, D]``."""
  config: CLIPVisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p, d = cfg.patch_size, cfg.hidden_size
    init = nn.initializers.normal(DEFAULT_INIT_STDDEV)
    patches = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                      name="patch_embedding", kernel_init=nn.with_logical_partitioning(
                          init, (None, None, None, "embed")), **kw)(pixels)
    patches = patches.reshape(patches.shape[0], -1, d)  # row-major, as torch's flatten(2)
    cls = self.param("class_embedding", nn.with_logical_partitioning(init, ("embed",)), (d,),
                     self.param_dtype)
    cls = jnp.broadcast_to(jnp.asarray(cls, self.dtype), (patches.shape[0], 1, d))
    positions = embed(cfg.num_patches + 1, d, ("length", "embed"), name="position_embedding",
                      **kw)(jnp.arange(cfg.num_patches + 1))
    return jnp.concatenate([cls, patches], axis=1) + positions[None]


class CLIPVisionTransformer(nn.Module):
  """Pixels ``[B, S, S, C]`` -> ``(last_hidden_state [B, 1+P, D], pooled [B, D])``.

  As in HF, ``last_hidden_state`` is the encoder output (no final norm) and ``pooled`` is
  ``post_layernorm`` of the [CLS] state.
  """
  config: CLIPVisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = CLIPVisionEmbeddings(cfg, name="embeddings", **kw)(pixels)
    x = layer_norm(name="pre_layrnorm", epsilon=cfg.layer_norm_eps, **kw)(x)
    x = CLIPEncoder(cfg, causal=False, name="encoder", **kw)(x, None)
    pooled = layer_norm(name="post_layernorm", epsilon=cfg.layer_norm_eps, **kw)(x[:, 0])
    return x, pooled


class CLIPVisionEncoder(nn.Module):
  """CLIP image tower with its projection (HF ``CLIPVisionModelWithProjection``).

  ``__call__(pixels [B, S, S, C])``: float pixels, channels-last, already normalised
  (:func:`~vqd_jax.text.clip_preprocess.clip_preprocess`) -> ``(last_hidden_state [B, 1+P, D],
  image_embeds [B, E])``.
  """
  config: CLIPVisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
      raise ValueError(f"CLIP pixels must be [batch, {', '.join(map(str, expected))}] "
                       f"(channels-last, preprocessed); got shape {tuple(pixels.shape)}.")
    hidden, pooled = CLIPVisionTransformer(cfg, name="vision_model", **kw)(pixels)
    embeds = dense(cfg.projection_dim, ("embed", None), use_bias=False, name="visual_projection",
                   **kw)(pooled)
    return hidden, embeds


def check_images(images: Any) -> None:
  """A clear ValueError unless ``images`` is uint8 ``[B, H, W, 3]`` or a non-empty list."""
  if isinstance(images, (list, tuple)):
    if not images:
      raise ValueError("encode_images got an empty list; pass at least one image.")
    return
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"encode_images expects uint8 images [batch, height, width, 3] (channels-last "
                     f"RGB, any size); got {images.dtype} {images.shape}.")


class CLIPImageEncoder:
  """A frozen CLIP image tower behind one call: uint8 images -> ``image_embeds``.

  Attributes:
    kind: ``clip_image`` (its source name in :mod:`vqd_jax.text.embeddings`).
    width, pooled_width: E, the projection width.
    processing: the preprocessing settings (the folder's ``preprocessor_config.json``).
  """
  kind = "clip_image"

  def __init__(self, module: CLIPVisionEncoder, params: Mapping[str, Any],
               processing: CLIPImageProcessing | None = None):
    self.module = module
    self.params = params
    self.processing = load_processing(processing)
    side = module.config.image_size
    if self.processing.output_hw != (side, side):
      raise ValueError(f"The preprocessor produces {self.processing.output_hw} images but the "
                       f"tower takes {side}x{side}: set crop_size (and size) to {side} in the "
                       "folder's preprocessor_config.json (without one CLIP's 224 is assumed).")
    self.width = self.pooled_width = module.config.projection_dim
    # One compilation per batch size: preprocessing always yields [B, S, S, 3].
    self._embed = jax.jit(lambda p, x: module.apply({"params": p}, x)[1].astype(jnp.float32))

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, dtype: Any = jnp.float32) -> "CLIPImageEncoder":
    """From a local ``CLIPVisionModelWithProjection`` or ``CLIPModel`` folder (``config.json``,
    weights, optional ``preprocessor_config.json``)."""
    from vqd_jax.interop import clip_vision  # pylint: disable=import-outside-toplevel
    directory = clip_vision.vision_component_dir(path)
    module, params = clip_vision.load_clip_vision_encoder(directory, dtype=dtype)
    return cls(module, params, load_processing(directory))

  def pixels(self, images: Any) -> np.ndarray:
    """Preprocessed float32 ``[B, S, S, 3]`` for uint8 ``[B, H, W, 3]`` (or a list of images)."""
    check_images(images)
    return clip_preprocess(images if isinstance(images, (list, tuple)) else np.asarray(images),
                           self.processing)

  def encode_images(self, images: Any) -> np.ndarray:
    """float32 ``[B, E]`` (HF ``image_embeds``) for uint8 ``[B, H, W, 3]`` of any size."""
    return np.asarray(self._embed(self.params, jnp.asarray(self.pixels(images))))
