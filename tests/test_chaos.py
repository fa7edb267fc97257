"""``python -m vqd_jax.bench chaos`` at CI size: a run SIGKILLed at a random moment ends
identical to one never interrupted, and the comparison catches a history that is not."""

import json
import os
import re

import pytest

from vqd_jax import bench
from vqd_jax.benchmarks import chaos

# Several processes (or SIGKILL timing): run alone, after the parallel pass (pytest.ini).
pytestmark = pytest.mark.serial


def test_killed_runs_end_identical_and_differences_are_caught(tmp_path, capsys):
  workdir = str(tmp_path / "chaos")
  assert bench.main(["chaos", "--config", "configs/vqvae.py:tiny", "--workdir", workdir,
                     "--kills", "1", "--steps", "40", "--seed", "1"]) == 0
  out = capsys.readouterr().out
  survived, sent = map(int, re.search(r"kills survived: (\d+) of (\d+) sent", out).groups())
  assert survived == sent >= 1 and "identical" in out, out
  reference, killed = os.path.join(workdir, "reference"), os.path.join(workdir, "chaos")
  assert chaos._compare(reference, killed) == []  # pylint: disable=protected-access
  # A step logged twice, and a changed loss, are each reported.
  path = os.path.join(killed, "metrics.jsonl")
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(rows[-1]) + "\n")
  assert any("steps differ" in p for p in chaos._compare(reference, killed))  # pylint: disable=protected-access
  rows[0]["loss"] += 1.0
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  assert any("losses differ" in p for p in chaos._compare(reference, killed))  # pylint: disable=protected-access
