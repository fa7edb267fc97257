"""Image-folder sources: a captioned folder (``captions.jsonl``) and a class-per-folder tree.

Both index their folder once at construction, with cheap checks only (the file exists, the caption
is not empty); entries that fail are skipped, counted in ``source.skipped`` and logged. Images are
decoded later, in the pipeline, where an undecodable file is skipped too (see
:mod:`vqd_jax.data.decode`). A folder with no usable entry is an error that says what was found.
"""

from __future__ import annotations

import collections
import json
import logging
import os

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _log_skips(name: str, root: str, skipped: collections.Counter) -> None:
  if skipped:
    details = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
    log.warning("%s %s: skipped %s.", name, root, details)


class ImageFolderSource:
  """Records ``{"image": path, "caption": str}`` from ``root/captions.jsonl``.

  Each line is a JSON object ``{"file": <path relative to root>, "caption": <text>}`` (noto-emoji-72
  is laid out this way). A file may appear on several lines, one per caption. The file is UTF-8
  (a byte-order mark is fine); lines that are not UTF-8 or not valid JSON, lack a file, name a
  missing file or have an empty caption are skipped and counted.

  Args:
    root: the folder holding the captions file and (under it) the images.
    captions_file: name of the JSON-lines file inside ``root``.
  """

  def __init__(self, root: str, captions_file: str = "captions.jsonl"):
    self.root = os.path.abspath(root)
    path = os.path.join(self.root, captions_file)
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"{path} does not exist. A captioned image folder needs a {captions_file} with one "
          '{"file": ..., "caption": ...} object per line; for a folder of class sub-folders use '
          "ClassFolderSource (data.source='class_folder').")
    self.skipped: collections.Counter = collections.Counter()
    self.entries: list[tuple[str, str]] = []
    with open(path, "rb") as f:  # decoded line by line: one bad line is skipped, not fatal
      for line_number, raw in enumerate(f, 1):
        try:
          line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
        except UnicodeDecodeError:
          self.skipped["not_utf8_line"] += 1
          log.debug("%s:%d is not UTF-8.", path, line_number)
          continue
        if not line.strip():
          continue
        entry = self._parse(line, line_number, path)
        if entry is not None:
          self.entries.append(entry)
    _log_skips("ImageFolderSource", self.root, self.skipped)
    if not self.entries:
      raise ValueError(f"{path} has no usable entry (skipped: {dict(self.skipped) or 'none'}). "
                       "Check that the file names are relative to the folder and captions are "
                       "non-empty.")

  def _parse(self, line: str, line_number: int, path: str) -> tuple[str, str] | None:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      self.skipped["bad_json_line"] += 1
      log.debug("%s:%d is not JSON.", path, line_number)
      return None
    if not isinstance(record, dict) or not isinstance(record.get("file"), str):
      self.skipped["no_file_field"] += 1
      return None
    caption = record.get("caption")
    if not isinstance(caption, str) or not caption.strip():
      self.skipped["empty_caption"] += 1
      return None
    file_path = os.path.join(self.root, record["file"])
    if not os.path.isfile(file_path):
      self.skipped["missing_file"] += 1
      log.debug("%s:%d names a missing file %s.", path, line_number, file_path)
      return None
    return file_path, caption.strip()

  def __len__(self) -> int:
    return len(self.entries)

  def __getitem__(self, index: int) -> dict:
    file_path, caption = self.entries[int(index)]
    return {"image": file_path, "caption": caption}

  def captions(self) -> list[str]:
    return [caption for _, caption in self.entries]

  def __repr__(self) -> str:
    return f"ImageFolderSource({self.root!r}, {len(self)} entries)"


def class_caption(template: str, class_name: str) -> str:
  """``"a photo of a {}"`` + ``"sea_turtle"`` -> ``"a photo of a sea turtle"``."""
  return template.format(class_name.replace("_", " ").strip())


class ClassFolderSource:
  """Records ``{"image": path, "caption": template.format(class)}`` from ``root/<class>/<image>``.

  Sub-folders are classes (underscores in their names become spaces in the caption); files with an
  image extension inside them are the examples, in sorted order. cifar10-test is laid out this way:
  ``cat/0000.jpg`` -> "a photo of a cat".

  Args:
    root: the folder of class sub-folders.
    template: caption template with one ``{}`` for the class name.
  """

  def __init__(self, root: str, template: str = "a photo of a {}"):
    self.root = os.path.abspath(root)
    if "{}" not in template:
      raise ValueError(f"Caption template {template!r} needs a '{{}}' where the class name goes.")
    if not os.path.isdir(self.root):
      raise FileNotFoundError(f"{self.root} is not a folder of class sub-folders.")
    self.template = template
    self.skipped: collections.Counter = collections.Counter()
    self.classes = sorted(d.name for d in os.scandir(self.root)
                          if d.is_dir() and not d.name.startswith("."))
    self.entries: list[tuple[str, int]] = []
    for label, name in enumerate(self.classes):
      for entry in sorted(os.scandir(os.path.join(self.root, name)), key=lambda e: e.name):
        if not entry.is_file() or entry.name.startswith("."):
          continue
        if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
          self.skipped["not_an_image_file"] += 1
          continue
        self.entries.append((entry.path, label))
    _log_skips("ClassFolderSource", self.root, self.skipped)
    if not self.entries:
      raise ValueError(
          f"{self.root} has no images in class sub-folders (found {len(self.classes)} "
          f"sub-folders; image extensions: {', '.join(IMAGE_EXTENSIONS)}). For a folder with a "
          "captions.jsonl use ImageFolderSource (data.source='folder').")
    self.class_captions = [class_caption(template, name) for name in self.classes]

  def __len__(self) -> int:
    return len(self.entries)

  def __getitem__(self, index: int) -> dict:
    file_path, label = self.entries[int(index)]
    return {"image": file_path, "caption": self.class_captions[label]}

  def captions(self) -> list[str]:
    return [self.class_captions[label] for _, label in self.entries]

  def __repr__(self) -> str:
    return (f"ClassFolderSource({self.root!r}, {len(self.classes)} classes, {len(self)} images, "
            f"template={self.template!r})")
