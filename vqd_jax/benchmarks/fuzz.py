"""``python -m vqd_jax.bench fuzz``: feed every command line bad inputs; each must be handled.

  python -m vqd_jax.bench fuzz [--workdir DIR] [--out fuzz.json] [--only WORD]
      [--run TINY_DIFFUSION_RUN --vqvae TINY_VQVAE_RUN]

Prepares a tiny untrained autoencoder, a diffusion run trained one step, an export of it and the
bad files (``vqd_jax.benchmarks.fuzz_files``) in DIR, then runs each case of
``vqd_jax.benchmarks.fuzz_cases`` in this process by calling a CLI's ``main(argv)`` (or a data
source for captioned folders), with its output captured. A case is *handled* when

* bad input: the command exits non-zero with a message (its first line is reported), or
* valid but odd input (emoji, grayscale images, skipped records ...): it succeeds and its output
  passes the case's check (the images written, the records skipped and counted).

Anything else is *not handled*: a traceback (any other exception, or one printed in the message),
a zero exit on bad input, a message-less exit, a refused valid input or a failed check. Prints a
table and ``fuzz: H of N cases handled``, writes every case to ``--out`` as JSON and exits 0 only
when all are handled. ``--run`` and ``--vqvae`` reuse tiny runs trained before (tests do).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

ERROR, OK = "error", "ok"
_ERROR_LINE = re.compile(r"error", re.IGNORECASE)
_TRACEBACK = "Traceback (most recent call last)"


@dataclasses.dataclass
class Case:
  """One input and what must happen to it.

  Attributes:
    name: unique, e.g. ``prompt/emoji``; the part before ``/`` is its category.
    run: calls a command line; returns its exit code (None = 0) or raises ``SystemExit``.
    expect: ``ERROR`` (a non-zero exit with a message) or ``OK`` (success).
    check: for ``OK``: the captured output -> a problem, or None when the result is right.
  """
  name: str
  run: Callable[[], Any]
  expect: str = ERROR
  check: Callable[[str], str | None] | None = None

  @property
  def category(self) -> str:
    return self.name.split("/", 1)[0]


@dataclasses.dataclass
class Result:
  name: str
  category: str
  expect: str
  handled: bool
  outcome: str  # refused | succeeded | traceback | exit 0 on bad input | no message | ...
  message: str  # first line of the message, the error or the failed check
  seconds: float


def _first_line(text: str) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[0] if lines else ""


def _message_of(code: Any, output: str) -> str:
  """A failure's message: a string exit code, else the output's error line (argparse, absl),
  else its last line."""
  if isinstance(code, str):
    return _first_line(code)
  lines = [line.strip() for line in output.splitlines() if line.strip()]
  errors = [line for line in lines if _ERROR_LINE.search(line)]
  return (errors or lines or [""])[-1]


def classify(case: Case, code: Any, error: BaseException | None, output: str
             ) -> tuple[bool, str, str]:
  """``(handled, outcome, message)`` of a finished case.

  Args:
    case: the case run.
    code: what ``run`` returned, or the ``SystemExit`` code it raised.
    error: any other exception it raised (a traceback), else None.
    output: its captured stdout, stderr and logs.
  """
  if error is not None:
    return False, "traceback", f"{type(error).__name__}: {_first_line(str(error))}"
  if _TRACEBACK in output:  # printed inside a message (absl prints a config file's traceback)
    return False, "traceback in message", _message_of(code, output)
  failed = code not in (None, 0)
  if case.expect == ERROR:
    if not failed:
      return False, "exit 0 on bad input", _first_line(output)[:200]
    message = _message_of(code, output)
    return bool(message), "refused" if message else "no message", message
  if failed:
    return False, "refused valid input", _message_of(code, output)
  problem = case.check(output) if case.check else None
  if problem:
    return False, "wrong result", problem
  lines = [line.strip() for line in output.splitlines() if line.strip()]
  return True, "succeeded", lines[-1] if lines else ""


@contextlib.contextmanager
def _captured_logs(stream):
  """Root logging into ``stream`` only (handlers bound to the real stderr are set aside)."""
  root = logging.getLogger()
  saved, level = root.handlers[:], root.level
  handler = logging.StreamHandler(stream)
  root.handlers = [handler]
  root.setLevel(logging.WARNING)
  try:
    yield
  finally:
    root.handlers, root.level = saved, level


@contextlib.contextmanager
def _unraisable_silenced():
  """``sys.unraisablehook`` silenced: errors of objects that an earlier case left and the garbage
  collector frees now (e.g. the read futures of a damaged checkpoint) are no output of this case
  (a command line exits before they would be freed)."""
  hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
  try:
    yield
  finally:
    sys.unraisablehook = hook


def _show_warning(message, category, filename, lineno, file=None, line=None):
  del filename, lineno, file, line  # one line, as a command line's user reads it
  sys.stderr.write(f"{category.__name__}: {message}\n")


def run_case(case: Case) -> Result:
  """Runs ``case`` with stdout, stderr, logs and warnings captured, and classifies it."""
  out = io.StringIO()
  code, error = None, None
  t0 = time.perf_counter()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), _captured_logs(out), \
      _unraisable_silenced(), warnings.catch_warnings():
    warnings.simplefilter("always")
    warnings.showwarning = _show_warning  # restored by catch_warnings
    try:
      code = case.run()
    except SystemExit as e:
      code = e.code
    except Exception as e:  # pylint: disable=broad-except
      error = e
      traceback.print_exc(file=out)
  handled, outcome, message = classify(case, code, error, out.getvalue())
  return Result(case.name, case.category, case.expect, handled, outcome, message,
                round(time.perf_counter() - t0, 2))


def table(results: Sequence[Result]) -> str:
  width = max(len(r.name) for r in results)
  rows = [f"{'case':<{width}}  {'expect':<6}  {'outcome':<21}  message"]
  for r in results:
    mark = "" if r.handled else "NOT HANDLED: "
    rows.append(f"{r.name:<{width}}  {r.expect:<6}  {r.outcome:<21}  {mark}{r.message[:110]}")
  handled = sum(r.handled for r in results)
  rows.append(f"fuzz: {handled} of {len(results)} cases handled")
  return "\n".join(rows)


def run_all(workdir: str, *, run_dir: str | None = None, vq_dir: str | None = None,
            only: str | None = None, progress: Callable[[Result], None] | None = None
            ) -> list[Result]:
  """Prepares the inputs in ``workdir`` (reusing ``run_dir``/``vq_dir`` when given: a trained
  tiny diffusion run and its autoencoder) and runs every case (or those whose name holds
  ``only``)."""
  from vqd_jax.benchmarks import fuzz_cases  # pylint: disable=import-outside-toplevel
  inputs = fuzz_cases.prepare(workdir, run_dir=run_dir, vq_dir=vq_dir)
  results = []
  for case in fuzz_cases.cases(inputs):
    if only and only not in case.name:
      continue
    results.append(run_case(case))
    if progress:
      progress(results[-1])
  return results


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.bench fuzz", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default=None,
                 help="Folder for the tiny runs, the bad files and the outputs (default: a new "
                      "temporary folder, removed afterwards).")
  p.add_argument("--out", default=None, metavar="FILE.json",
                 help="Write every case (name, category, expected, handled, outcome, message, "
                      "seconds) to this JSON file.")
  p.add_argument("--only", default=None, metavar="WORD",
                 help="Run only the cases whose name contains WORD (e.g. prompt, paint/, train).")
  p.add_argument("--run", default=None, metavar="DIR",
                 help="Use this trained configs/diffusion.py:tiny run instead of training one.")
  p.add_argument("--vqvae", default=None, metavar="DIR",
                 help="Use this configs/vqvae.py:tiny autoencoder run instead of making one.")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  with contextlib.ExitStack() as stack:
    workdir = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="vqd_fuzz_"))
    os.makedirs(workdir, exist_ok=True)
    results = run_all(workdir, run_dir=args.run, vq_dir=args.vqvae, only=args.only,
                      progress=lambda r: print(f"  {r.name}: {r.outcome}", file=sys.stderr))
  print(table(results))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"cases": len(results), "handled": sum(r.handled for r in results),
                 "results": [dataclasses.asdict(r) for r in results]}, f, indent=1)
  return 0 if all(r.handled for r in results) else 1
