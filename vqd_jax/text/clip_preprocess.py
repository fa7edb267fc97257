"""CLIP's image preprocessing, step for step as transformers' ``CLIPImageProcessor`` (PIL backend).

  pixels = clip_preprocess(images, "clip-vit/")   # float32 [B, S, S, 3], channels-last

Per image: RGB conversion (alpha composited onto white), resize of the shortest edge with PIL
(bicubic by default; the long edge is ``int(size * long / short)``, truncated), centre crop
(zero-padded when the image is smaller than the crop), rescale (float64 multiply, then float32) and
normalisation with ``image_mean``/``image_std`` in float32. transformers' torchvision backend (the
default where torchvision is installed) resizes with torch's antialiased bicubic instead, which
differs by up to one uint8 level; this module follows the PIL path, which CLIP's own preprocessing
(torchvision ``Resize`` on PIL images) also takes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROCESSOR_FILE = "preprocessor_config.json"


@dataclasses.dataclass(frozen=True)
class CLIPImageProcessing:
  """The fields of a ``preprocessor_config.json`` that ``CLIPImageProcessor`` reads.

  ``shortest_edge`` resizes keeping the aspect ratio; else ``resize_hw`` resizes to exactly
  (height, width). ``resample`` is a PIL resampling filter id (3 = bicubic).
  """
  shortest_edge: int | None = 224
  resize_hw: tuple[int, int] | None = None
  crop_hw: tuple[int, int] = (224, 224)
  image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
  image_std: tuple[float, float, float] = OPENAI_CLIP_STD
  rescale_factor: float = 1 / 255
  resample: int = 3
  do_resize: bool = True
  do_center_crop: bool = True
  do_rescale: bool = True
  do_normalize: bool = True

  @property
  def output_hw(self) -> tuple[int, int]:
    """(height, width) of every preprocessed image, when it does not depend on the input."""
    if self.do_center_crop:
      return self.crop_hw
    if self.do_resize and self.resize_hw is not None:
      return self.resize_hw
    raise ValueError("Without a centre crop or a fixed resize the output size follows the input.")


def _hw(value: Any, what: str) -> tuple[int, int]:
  """``224`` or ``{"height": h, "width": w}`` -> ``(h, w)``."""
  if isinstance(value, Mapping) and "height" in value and "width" in value:
    return int(value["height"]), int(value["width"])
  if isinstance(value, (int, np.integer)):
    return int(value), int(value)
  raise ValueError(f"preprocessor {what}={value!r} is not understood; expected an int or "
                   "{'height': H, 'width': W}.")


def processing_from_dict(d: Mapping[str, Any]) -> CLIPImageProcessing:
  """A ``preprocessor_config.json`` dict -> settings (missing keys: ``CLIPImageProcessor``'s)."""
  size = d.get("size", {"shortest_edge": 224})
  shortest, exact = None, None
  if isinstance(size, (int, np.integer)):  # legacy configs: an int is the shortest edge
    shortest = int(size)
  elif isinstance(size, Mapping) and "shortest_edge" in size:
    shortest = int(size["shortest_edge"])
  else:
    exact = _hw(size, "size")
  mean, std = d.get("image_mean", OPENAI_CLIP_MEAN), d.get("image_std", OPENAI_CLIP_STD)
  if len(mean) != 3 or len(std) != 3:
    raise ValueError(f"image_mean and image_std need 3 values (RGB); got {mean!r} and {std!r}.")
  return CLIPImageProcessing(
      shortest_edge=shortest, resize_hw=exact, crop_hw=_hw(d.get("crop_size", 224), "crop_size"),
      image_mean=tuple(float(m) for m in mean), image_std=tuple(float(s) for s in std),
      rescale_factor=float(d.get("rescale_factor", 1 / 255)), resample=int(d.get("resample", 3)),
      **{k: bool(d.get(k, True)) for k in ("do_resize", "do_center_crop", "do_rescale",
                                           "do_normalize")})


def processing_to_dict(p: CLIPImageProcessing) -> dict[str, Any]:
  """The ``preprocessor_config.json`` dict that ``CLIPImageProcessor`` reads back as ``p``."""
  size = ({"shortest_edge": p.shortest_edge} if p.shortest_edge is not None
          else {"height": p.resize_hw[0], "width": p.resize_hw[1]})
  return {"image_processor_type": "CLIPImageProcessor", "size": size,
          "crop_size": {"height": p.crop_hw[0], "width": p.crop_hw[1]},
          "image_mean": list(p.image_mean), "image_std": list(p.image_std),
          "rescale_factor": p.rescale_factor, "resample": p.resample, "do_resize": p.do_resize,
          "do_center_crop": p.do_center_crop, "do_rescale": p.do_rescale,
          "do_normalize": p.do_normalize, "do_convert_rgb": True}


def load_processing(source: CLIPImageProcessing | Mapping[str, Any] | str | os.PathLike | None
                    ) -> CLIPImageProcessing:
  """Settings from a dict, a ``preprocessor_config.json`` file or a folder holding one.

  A folder without the file (and ``None``) gives the defaults: shortest edge and crop 224, OpenAI
  CLIP mean/std.
  """
  if source is None or isinstance(source, CLIPImageProcessing):
    return source or CLIPImageProcessing()
  if isinstance(source, Mapping):
    return processing_from_dict(source)
  path = os.fspath(source)
  if os.path.isdir(path):
    path = os.path.join(path, PROCESSOR_FILE)
    if not os.path.exists(path):
      return CLIPImageProcessing()
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Preprocessor config {path!r} does not exist; pass a folder (with or "
                            f"without {PROCESSOR_FILE}), the file itself or a dict.")
  with open(path, encoding="utf-8") as f:
    return processing_from_dict(json.load(f))


def to_rgb(image: np.ndarray | PIL.Image.Image) -> np.ndarray:
  """uint8 ``[H, W, 3]`` from a PIL image or a uint8 ``[H, W, 1|3|4]`` array; grey is repeated,
  alpha is composited onto white (as transformers)."""
  if isinstance(image, PIL.Image.Image):
    if "A" in image.getbands() or image.info.get("transparency") is not None:
      rgba = image.convert("RGBA")
      white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
      return np.asarray(PIL.Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"An image must be uint8 [H, W, 3] (channels-last RGB; grey [H, W, 1] and "
                     f"RGBA [H, W, 4] are converted), got {image.dtype} {image.shape}.")
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  if image.shape[-1] == 4:
    alpha = image[..., 3:4] / 255
    return np.round(alpha * image[..., :3] + (1 - alpha) * 255).astype(np.uint8)
  return image


def resized_hw(height: int, width: int, processing: CLIPImageProcessing) -> tuple[int, int]:
  """The size the resize step produces (transformers' ``get_resize_output_image_size``)."""
  if processing.shortest_edge is None:
    return processing.resize_hw
  size = processing.shortest_edge
  short, long = min(height, width), max(height, width)
  new_long = int(size * long / short)
  return (new_long, size) if width <= height else (size, new_long)


def center_crop(image: np.ndarray, crop_hw: tuple[int, int]) -> np.ndarray:
  """``[H, W, C]`` -> ``[h, w, C]`` around the centre, zero-padded where the image is smaller."""
  height, width = image.shape[:2]
  ch, cw = crop_hw
  pad_h, pad_w = max(ch - height, 0), max(cw - width, 0)
  if pad_h or pad_w:  # transformers pads ceil(pad/2) before, the rest after
    top, left = math.ceil(pad_h / 2), math.ceil(pad_w / 2)
    image = np.pad(image, ((top, pad_h - top), (left, pad_w - left), (0, 0)))
    height, width = image.shape[:2]
  top, left = (height - ch) // 2, (width - cw) // 2
  return image[top:top + ch, left:left + cw]


def preprocess_one(image: np.ndarray | PIL.Image.Image, processing: CLIPImageProcessing
                   ) -> np.ndarray:
  """One image (any size) -> float32 ``[h, w, 3]``."""
  rgb = to_rgb(image)
  if processing.do_resize:
    height, width = resized_hw(rgb.shape[0], rgb.shape[1], processing)
    resampled = PIL.Image.fromarray(rgb).resize((width, height), resample=processing.resample)
    rgb = np.asarray(resampled)
  if processing.do_center_crop:
    rgb = center_crop(rgb, processing.crop_hw)
  pixels = rgb.astype(np.float32)
  if processing.do_rescale:
    pixels = (rgb.astype(np.float64) * processing.rescale_factor).astype(np.float32)
  if processing.do_normalize:
    mean = np.asarray(processing.image_mean, np.float32)
    std = np.asarray(processing.image_std, np.float32)
    pixels = (pixels - mean) / std
  return pixels


def clip_preprocess(images: np.ndarray | Sequence[np.ndarray | PIL.Image.Image],
                    processor_config: Any = None) -> np.ndarray:
  """CLIP pixels for the image tower.

  Args:
    images: uint8 ``[B, H, W, 3]``, or a list of PIL images / uint8 ``[H, W, C]`` arrays of any
      sizes.
    processor_config: a folder (its ``preprocessor_config.json``, else the defaults), the JSON file,
      its dict, a :class:`CLIPImageProcessing` or None (defaults).

  Returns:
    float32 ``[B, S, S, 3]`` (channels-last; transformers returns ``[B, 3, S, S]``).
  """
  processing = load_processing(processor_config)
  if isinstance(images, np.ndarray):
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3, 4):
      raise ValueError(f"images must be uint8 [batch, height, width, 3] (channels-last), got "
                       f"{images.dtype} {images.shape}; pass a list for images of different sizes.")
  elif isinstance(images, PIL.Image.Image) or not isinstance(images, Sequence):
    raise ValueError("images must be a uint8 [batch, height, width, 3] array or a list of images; "
                     f"got {type(images).__name__}.")
  if len(images) == 0:
    raise ValueError("clip_preprocess needs at least one image.")
  out = [preprocess_one(image, processing) for image in images]
  if len({o.shape for o in out}) > 1:
    raise ValueError("Preprocessed images differ in size (no centre crop configured); resize them "
                     "to one size first.")
  return np.stack(out)
