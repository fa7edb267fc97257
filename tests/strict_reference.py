"""A pytest plugin: with ``VQD_JAX_STRICT_REFERENCE=1`` (``.ci/run`` sets it) a test marked
``reference`` that skips fails instead, so CI cannot pass without comparing against the PyTorch
originals (a missing torch, diffusers or transformers is then a failure that names the reason)."""

from __future__ import annotations

import os

import pytest

ENV = "VQD_JAX_STRICT_REFERENCE"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  strict = os.environ.get(ENV) == "1"
  if strict and report.skipped and item.get_closest_marker("reference") is not None:
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = (f"reference test skipped with {ENV}=1 (CI): {reason}; install the test "
                       "extras (pip install -e \".[test]\")")
