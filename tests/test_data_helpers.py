"""Builders of small image folders for the data tests (no tests here; imported by the others)."""

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def solid_image(color, size=(20, 16), mode="RGB") -> Image.Image:
  """A ``size`` (w, h) image of one colour; distinct colours tell examples apart after resizing."""
  return Image.new(mode, size, tuple(color))


def jpeg_bytes(color, size=(20, 16)) -> bytes:
  buf = io.BytesIO()
  solid_image(color, size).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def make_captioned_folder(root: Path) -> dict:
  """``root/captions.jsonl`` with 3 good images and every kind of bad entry.

  Good: red.png, green.png (two captions), blue_rgba.png (transparent -> white background).
  Bad: corrupt.jpg (not an image; found only at decode time), a missing file, an empty caption,
  a non-JSON line, a line without "file". Returns what the source should report.
  """
  (root / "images").mkdir(parents=True)
  solid_image((255, 0, 0)).save(root / "images" / "red.png")
  solid_image((0, 255, 0)).save(root / "images" / "green.png")
  rgba = np.zeros((16, 16, 4), np.uint8)
  rgba[..., 2] = 255  # blue, fully transparent
  Image.fromarray(rgba, "RGBA").save(root / "images" / "blue_rgba.png")
  (root / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
  (root / "images" / "empty.png").write_bytes(b"")
  lines = [
      {"file": "images/red.png", "caption": "a red square"},
      {"file": "images/green.png", "caption": "a green square"},
      {"file": "images/green.png", "caption": "  a square of green  "},
      {"file": "images/blue_rgba.png", "caption": "a see-through blue square"},
      {"file": "images/corrupt.jpg", "caption": "a corrupt file"},
      {"file": "images/missing.png", "caption": "a file that is not there"},
      {"file": "images/red.png", "caption": "   "},
      {"caption": "no file field"},
  ]
  text = "\n".join(json.dumps(line) for line in lines) + "\n{not json\n\n"
  (root / "captions.jsonl").write_text(text, encoding="utf-8")
  return {"entries": 5, "skipped": {"missing_file": 1, "empty_caption": 1, "bad_json_line": 1,
                                    "no_file_field": 1}}


def make_class_folder(root: Path, per_class: int = 2) -> None:
  """``root/<class>/*.jpg`` for classes red_fox (2 words) and green_frog, plus junk files."""
  for name, color in (("red_fox", (255, 0, 0)), ("green_frog", (0, 255, 0))):
    (root / name).mkdir(parents=True)
    for i in range(per_class):
      (root / name / f"{i:04d}.jpg").write_bytes(jpeg_bytes(color))
  (root / "red_fox" / "notes.txt").write_text("not an image")
  (root / "README.md").write_text("top-level files are not classes")
