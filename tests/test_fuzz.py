"""``python -m vqd_jax.bench fuzz`` at CI size: every bad input is handled, and the classifier
flags what is not."""

import json
import sys

import pytest

from cli_coverage import covers
from vqd_jax.benchmarks import fuzz
from vqd_jax.benchmarks.fuzz import OK, Case

# The kinds of bad input the harness must keep covering: 7 prompts, 5 prompt files, 10 image files,
# 3 --paint syntax errors, 7 captioned-folder records, 7 numeric flags, 4 config errors, 4 damaged
# pretrained folders, 2 workdirs; the table holds more than these.
MIN_CASES = 53
CATEGORIES = {"prompt", "prompts_file", "init_image", "mask", "paint", "folder", "numeric",
              "train", "encode", "workdir", "pretrained", "convert"}


def test_every_bad_input_is_handled(tiny_run, tiny_vq_dir, tmp_path):
  results = fuzz.run_all(str(tmp_path), run_dir=tiny_run, vq_dir=tiny_vq_dir)
  table = fuzz.table(results)
  assert all(r.handled for r in results), table
  assert len(results) >= MIN_CASES, table
  assert CATEGORIES <= {r.category for r in results}
  assert len({r.name for r in results}) == len(results)
  assert table.endswith(f"fuzz: {len(results)} of {len(results)} cases handled")


@covers("bench fuzz --workdir", "bench fuzz --out", "bench fuzz --run", "bench fuzz --vqvae",
        "bench fuzz --only")
def test_the_command_writes_every_case_as_json(tiny_run, tiny_vq_dir, tmp_path, capsys):
  out = tmp_path / "fuzz.json"
  assert fuzz.main(["--workdir", str(tmp_path / "work"), "--out", str(out), "--run", tiny_run,
                    "--vqvae", tiny_vq_dir, "--only", "numeric/"]) == 0
  report = json.loads(out.read_text())
  assert report["cases"] == report["handled"] == len(report["results"]) > 10
  # "--only numeric/": no other case ran.
  assert all("numeric/" in r["name"] for r in report["results"])
  # "--workdir": the inputs were prepared there; "--run" and "--vqvae": from the runs given (the
  # export of the run), no tiny runs of its own trained there.
  work = tmp_path / "work"
  assert (work / "pretrained" / "model_index.json").is_file() and (work / "images").is_dir()
  assert not (work / "run").exists() and not (work / "vq").exists()
  assert capsys.readouterr().out.splitlines()[-1] == (
      f"fuzz: {report['cases']} of {report['cases']} cases handled")


def _fails(message):
  raise SystemExit(message)


def _prints_a_traceback_and_exits():
  print("FATAL Flags parsing error: Traceback (most recent call last):\n  File ...",
        file=sys.stderr)
  raise SystemExit(1)


def _prints_and_exits():
  print("python -m tool: error: argument --n: must be at least 1", file=sys.stderr)
  raise SystemExit(2)


@pytest.mark.parametrize("case, outcome", [
    (Case("x/traceback", lambda: {}["missing"]), "traceback"),
    (Case("x/traceback_on_valid", lambda: {}["missing"], OK), "traceback"),
    (Case("x/zero_exit", lambda: 0), "exit 0 on bad input"),
    (Case("x/silent_no_op", lambda: None), "exit 0 on bad input"),
    (Case("x/empty_message", lambda: _fails("")), "no message"),
    (Case("x/traceback_in_message", _prints_a_traceback_and_exits), "traceback in message"),
    (Case("x/refused_valid", lambda: _fails("nope"), OK), "refused valid input"),
    (Case("x/wrong_result", lambda: 0, OK, lambda output: "2 images, 1 expected"),
     "wrong result")])
def test_the_classifier_flags_unhandled_cases(case, outcome):
  result = fuzz.run_case(case)
  assert (result.handled, result.outcome) == (False, outcome)


@pytest.mark.parametrize("case, message", [
    (Case("x/message", lambda: _fails("--seed must be at least 0.\nmore")),
     "--seed must be at least 0."),
    (Case("x/argparse", _prints_and_exits), "python -m tool: error: argument --n: must be at "
                                            "least 1"),
    (Case("x/valid", lambda: print("Wrote 1 images") or 0, OK, lambda output: None),
     "Wrote 1 images")])
def test_the_classifier_accepts_handled_cases(case, message):
  result = fuzz.run_case(case)
  assert (result.handled, result.message) == (True, message)
