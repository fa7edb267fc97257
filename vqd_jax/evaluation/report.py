"""A metrics report: every metric measured or skipped with its reason, as JSON and Markdown.

``metrics.json`` holds the run's details and, under ``"metrics"``, one entry per metric in table
order: ``{"value", "error", "error_kind", "n", "notes"}`` for a measured one (``error``: its
standard deviation or standard error where defined, else null; ``error_kind`` says which), or
``{"skipped": reason}``. ``metrics.md`` is the same as a Markdown table: metric, value, ±, n,
notes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any


class Skipped(Exception):
  """A metric whose inputs are missing; the message is the reason (e.g. "no --inception given")."""


@dataclasses.dataclass
class Row:
  """One metric of the report.

  Attributes:
    metric: its key (``fid``, ``kid``, ...).
    value: the figure, or None when skipped.
    error: its standard deviation or standard error, where defined.
    error_kind: what ``error`` is (e.g. "std over 100 subsets of 6").
    n: the number of samples it was measured on.
    notes: what it was measured with, and caveats.
    skipped: the reason it was not measured, or None.
  """
  metric: str
  value: float | None = None
  error: float | None = None
  error_kind: str = ""
  n: int | None = None
  notes: str = ""
  skipped: str | None = None

  def as_json(self) -> dict[str, Any]:
    if self.skipped is not None:
      return {"skipped": self.skipped}
    return {"value": self.value, "error": self.error, "error_kind": self.error_kind or None,
            "n": self.n, "notes": self.notes}


def _number(value: float | None, digits: int = 4) -> str:
  if value is None:
    return ""
  if value != 0 and (abs(value) < 10 ** -digits or not math.isfinite(value)):
    return f"{value:.{digits}g}"
  return f"{value:.{digits}f}"


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[Row]) -> str:
  """The rows as a Markdown table: metric, value, ±, n, notes (a skipped row: its reason)."""
  lines = ["| metric | value | ± | n | notes |", "|---|---|---|---|---|"]
  for row in rows:
    if row.skipped is not None:
      cells = [row.metric, "skipped", "", "", row.skipped]
    else:
      error = _number(row.error) + (f" ({row.error_kind})" if row.error_kind else "")
      cells = [row.metric, _number(row.value), error.strip(), str(row.n or ""), row.notes]
    lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
  return "\n".join(lines) + "\n"


def write(out: str, header: dict[str, Any], rows: list[Row]) -> tuple[str, str]:
  """Writes ``out/metrics.json`` (``header`` plus the rows) and ``out/metrics.md``; returns both
  paths."""
  json_path, md_path = os.path.join(out, "metrics.json"), os.path.join(out, "metrics.md")
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump({**header, "metrics": {r.metric: r.as_json() for r in rows}}, f, indent=2)
  title = f"# Metrics of {header.get('workdir', '')}\n\n" if header.get("workdir") else ""
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(title + markdown(rows))
  return json_path, md_path
