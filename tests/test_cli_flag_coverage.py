"""Every command-line flag is exercised by a test that asserts its effect.

Tests claim flags with ``@cli_coverage.covers(...)``. This test checks the claims against the
flags the parsers actually define: a claim of a flag that does not exist fails (a renamed flag
must take its tests along), a claiming test must pass the option it claims, and the flags no
test claims must be exactly those listed in ``cli_flags_uncovered.txt``, so that list can only
shrink: a new flag needs a test, and a newly tested flag leaves the list.
"""

import ast
import pathlib

import cli_coverage

TESTS = pathlib.Path(__file__).parent
UNCOVERED = TESTS / "cli_flags_uncovered.txt"


def _claims() -> dict[str, list[tuple[str, str]]]:
  """flag -> [(test name, test source)] from every ``covers(...)`` decorator under tests/."""
  claims = {}
  for path in sorted(TESTS.glob("test_*.py")):
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
      if not isinstance(node, ast.FunctionDef):
        continue
      for deco in node.decorator_list:
        func = getattr(deco, "func", None)
        if getattr(func, "id", getattr(func, "attr", None)) != "covers":
          continue
        for arg in deco.args:
          assert isinstance(arg, ast.Constant), f"{path.name}:{node.name}: covers() takes literals"
          claims.setdefault(arg.value, []).append(
              (f"{path.name}::{node.name}", ast.get_source_segment(source, node)))
  return claims


def _listed_uncovered() -> set[str]:
  lines = UNCOVERED.read_text().splitlines()
  return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_claims_name_real_flags_and_pass_them():
  flags, claims = cli_coverage.all_flags(), _claims()
  assert claims, "no test claims any flag: is the covers() scan broken?"
  stale = sorted(set(claims) - flags)
  assert not stale, f"covers() names flags no command defines: {stale}"
  for flag, tests in claims.items():
    option = flag.rsplit(" ", 1)[1]
    for name, source in tests:
      if option.startswith("--"):
        assert option in source, f"{name} claims {flag!r} but never passes {option}"


def test_every_flag_is_claimed_or_listed_as_uncovered():
  flags, claimed = cli_coverage.all_flags(), set(_claims())
  uncovered, listed = flags - claimed, _listed_uncovered()
  newly_covered = sorted(listed & claimed)
  assert not newly_covered, f"tested now, remove from {UNCOVERED.name}: {newly_covered}"
  unknown = sorted(listed - flags)
  assert not unknown, f"{UNCOVERED.name} lists flags no command defines: {unknown}"
  untested = sorted(uncovered - listed)
  assert not untested, f"flags with no test asserting their effect: {untested}"
