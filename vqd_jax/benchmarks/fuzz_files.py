"""The bad (and odd but valid) input files ``python -m vqd_jax.bench fuzz`` feeds the CLIs.

Everything is written with PIL, numpy and json into a folder; nothing is downloaded. Images are
small (the largest decodes to 10,000 x 10,000 pixels from a file of a few kB).
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import struct
import zlib

import numpy as np
from PIL import Image

SIDE = 32  # pixels of the tiny presets' images
EXIF_ORIENTATION = 0x0112


def _square(size: int = SIDE) -> np.ndarray:
  """``[size, size]`` uint8: white top-left quarter, black elsewhere (a mask and an image)."""
  a = np.zeros((size, size), np.uint8)
  a[:size // 2, :size // 2] = 255
  return a


def _save(path: str, image: Image.Image, **kwargs) -> str:
  image.save(path, **kwargs)
  return path


def _bomb_png(path: str, width: int = 50_000, height: int = 50_000) -> str:
  """A valid tiny PNG whose header claims ``width x height`` pixels (a decompression bomb)."""
  buffer = io.BytesIO()
  Image.new("L", (1, 1)).save(buffer, "PNG")
  data = bytearray(buffer.getvalue())
  ihdr = data.index(b"IHDR")
  data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
  crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
  data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
  with open(path, "wb") as f:
    f.write(bytes(data))
  return path


def _exif_rotated(path: str) -> str:
  """40 x 20 stored (red top half, blue bottom) with EXIF orientation 6: shown 20 x 40, red on the
  right."""
  a = np.zeros((20, 40, 3), np.uint8)
  a[:10, :, 0] = 255
  a[10:, :, 2] = 255
  exif = Image.Exif()
  exif[EXIF_ORIENTATION] = 6
  return _save(path, Image.fromarray(a), exif=exif)


def write_images(root: str) -> dict[str, str]:
  """``{kind: path}`` of image files (and non-images) for ``--init-image``, ``--mask``,
  ``--paint`` and captioned folders. Every valid one has a white region on black."""
  os.makedirs(root, exist_ok=True)
  p = functools.partial(os.path.join, root)
  square = _square()
  rgb = np.repeat(square[..., None], 3, -1)
  files = {
      "png": _save(p("rgb.png"), Image.fromarray(rgb)),
      "wrong_size": _save(p("wrong_size.png"), Image.fromarray(_square(90)[:, :57])),
      "mode_l": _save(p("mode_l.png"), Image.fromarray(square, "L")),
      "mode_p": _save(p("mode_p.png"), Image.fromarray(rgb).convert("P")),
      "mode_1": _save(p("mode_1.png"), Image.fromarray(square).convert("1")),
      "png16": _save(p("png16.png"), Image.fromarray(square.astype(np.uint16) * 257)),
      # Near black in 16 bits (200 of 65535): clipping instead of scaling would read it as grey.
      "png16_dark": _save(p("png16_dark.png"),
                          Image.fromarray(np.full((SIDE, SIDE), 200, np.uint16))),
      "cmyk_jpeg": _save(p("cmyk.jpg"), Image.fromarray(rgb).convert("CMYK"), quality=95),
      "exif_rotated": _exif_rotated(p("exif_rotated.jpg")),
      "one_pixel": _save(p("one_pixel.png"), Image.new("RGB", (1, 1), (200, 30, 30))),
      # 10,000 x 10,000 1-bit: 100M pixels, above PIL's bomb warning, below its error.
      "very_large": _save(p("very_large.png"), Image.new("1", (10_000, 10_000))),
      "bomb": _bomb_png(p("bomb.png")),
      "missing": p("missing.png"),
      "folder": p("folder.png"),
      "empty_file": p("empty.png"),
      "not_image": p("not_image.png"),
      "truncated": p("truncated.png"),
  }
  rgba = np.concatenate([np.full((SIDE, SIDE, 3), 255, np.uint8), square[..., None]], -1)
  files["rgba"] = _save(p("rgba.png"), Image.fromarray(rgba, "RGBA"))
  # White under full transparency: nothing is drawn, whatever the colour channels hold.
  rgba[..., 3] = 0
  files["rgba_clear"] = _save(p("rgba_clear.png"), Image.fromarray(rgba, "RGBA"))
  files["black"] = _save(p("black.png"), Image.new("L", (SIDE, SIDE)))
  os.makedirs(files["folder"], exist_ok=True)
  open(files["empty_file"], "wb").close()  # pylint: disable=consider-using-with
  with open(files["not_image"], "w", encoding="utf-8") as f:
    f.write("this is a caption, not a PNG\n")
  noisy = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(noisy).save(buffer, "PNG")
  with open(files["truncated"], "wb") as f:
    f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
  return files


def write_prompt_files(root: str) -> dict[str, str]:
  """``{kind: path}`` of ``--prompts-file`` inputs."""
  os.makedirs(root, exist_ok=True)
  contents = {
      "blank_lines": "\n\n  a red circle  \n\n\t\n",
      "bom": "\ufeffa red circle\n",
      "crlf": "a red circle\r\n\r\n",
      "empty": "",
      "only_blank": " \n\t\n\n",
  }
  files = {}
  for kind, text in contents.items():
    files[kind] = os.path.join(root, f"{kind}.txt")
    with open(files[kind], "w", encoding="utf-8", newline="") as f:
      f.write(text)
  files["invalid_utf8"] = os.path.join(root, "invalid_utf8.txt")
  with open(files["invalid_utf8"], "wb") as f:
    f.write(b"a red circle\n\xff\xfe\xc3(\n")
  files["latin1"] = os.path.join(root, "latin1.txt")
  with open(files["latin1"], "wb") as f:
    f.write("a red caf\u00e9\n".encode("latin-1"))
  files["missing"] = os.path.join(root, "missing.txt")
  return files


def write_captioned_folder(root: str, lines: list, images: dict[str, str] | None = None,
                           bom: bool = False) -> str:
  """A ``data.source=folder`` folder: ``images`` copied in by name, ``captions.jsonl`` from
  ``lines`` (dicts are written as JSON, text and bytes as they are; ``bom``: after a UTF-8
  byte-order mark)."""
  os.makedirs(root, exist_ok=True)
  for name, src in (images or {}).items():
    shutil.copy(src, os.path.join(root, name))
  with open(os.path.join(root, "captions.jsonl"), "wb") as f:
    f.write(b"\xef\xbb\xbf" if bom else b"")
    for line in lines:
      line = line if isinstance(line, (str, bytes)) else json.dumps(line)
      f.write((line.encode("utf-8") if isinstance(line, str) else line) + b"\n")
  return root


def write_configs(root: str) -> dict[str, str]:
  """Config files that cannot be loaded: a syntax error and no ``get_config``."""
  os.makedirs(root, exist_ok=True)
  files = {"syntax_error": os.path.join(root, "syntax_error.py"),
           "no_get_config": os.path.join(root, "no_get_config.py")}
  with open(files["syntax_error"], "w", encoding="utf-8") as f:
    f.write("def get_config(:\n")
  with open(files["no_get_config"], "w", encoding="utf-8") as f:
    f.write("CONFIG = {}\n")
  return files


def _edit_json(path: str, edit) -> None:
  with open(path, encoding="utf-8") as f:
    value = json.load(f)
  with open(path, "w", encoding="utf-8") as f:
    f.write(edit(value) if callable(edit) else edit)


def write_pretrained_variants(good: str, root: str) -> dict[str, str]:
  """Copies of the pipeline folder ``good`` (an export), each damaged one way."""
  edits = {
      "missing_transformer_config": lambda d: os.remove(os.path.join(d, "transformer",
                                                                     "config.json")),
      "missing_vqvae": lambda d: shutil.rmtree(os.path.join(d, "vqvae")),
      "missing_weights": lambda d: os.remove(os.path.join(
          d, "transformer", "diffusion_pytorch_model.safetensors")),
      "extra_files": lambda d: (os.makedirs(os.path.join(d, "unet")),
                                open(os.path.join(d, "README.md"), "w").close()),
      "arbitrary_classes": lambda d: _edit_json(
          os.path.join(d, "model_index.json"),
          lambda m: json.dumps({**m, "transformer": ["os", "system"],
                                "vqvae": ["vqd_jax_fuzz_never_imported", "Boom"]})),
      "malformed_index": lambda d: _edit_json(os.path.join(d, "model_index.json"), "{not json"),
      "index_is_a_list": lambda d: _edit_json(os.path.join(d, "model_index.json"), "[1, 2]"),
      "malformed_transformer_config": lambda d: _edit_json(
          os.path.join(d, "transformer", "config.json"), '{"num_layers": '),
      "corrupt_weights": lambda d: open(os.path.join(  # pylint: disable=consider-using-with
          d, "transformer", "diffusion_pytorch_model.safetensors"), "wb").write(b"\0" * 64),
  }
  out = {}
  for kind, edit in edits.items():
    out[kind] = os.path.join(root, kind)
    shutil.copytree(good, out[kind])
    edit(out[kind])
  return out
