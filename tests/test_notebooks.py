"""The Colab notebooks in notebooks/: stored clean, in step with notebooks/generate.py, and every
one runs from its first cell to its last in its small setting.

Executor: nbclient. It runs a notebook cell by cell in a real Jupyter kernel (ipykernel), as
Jupyter and Colab do, and stops at the first cell that raises; it needs only nbclient, nbformat
and ipykernel. nbmake is a pytest plugin around the same nbclient that collects every .ipynb as a
test of its own, with no fixture to give the notebooks one shared runs folder and compilation
cache or to run them in the order where each reuses the quickstart's runs. papermill injects
parameters, which these notebooks do not need (the small setting comes from the environment,
``VQD_NOTEBOOK_SMALL=1``, which any executor passes on; their ``parameters`` cell keeps them
papermill-compatible), at the cost of heavier dependencies.

Every kernel runs with ``JAX_PLATFORMS=cpu``, cwd ``notebooks/``, the suite's persistent
compilation cache (a program one notebook compiled is a cache hit in the next) and one runs folder
in tmp (``VQD_NOTEBOOK_RUNS``): paint_and_experts and vqd_vs_ar_ctf reuse the quickstart
notebook's autoencoder, tokens and denoiser instead of training them again, as they do for a user
who runs them in turn. Compiling XLA programs, most of a small notebook's time, keeps one core
busy, so two notebooks run at a time (quickstart with pretrained, then the two that reuse the
quickstart's runs); each test reports its notebook's seconds (``pytest -s``).
"""

from __future__ import annotations

import concurrent.futures
import importlib
import json
import os
import re
import subprocess
import sys
import time

import jax
import pytest

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "notebooks")
NOTEBOOKS = ("quickstart", "pretrained", "paint_and_experts", "vqd_vs_ar_ctf")
# Notebook -> the notebook whose runs it reuses when they are there (it trains them otherwise).
REUSES = {"paint_and_experts": "quickstart", "vqd_vs_ar_ctf": "quickstart"}
COLAB = (r"\(https://colab\.research\.google\.com/github/[\w.-]+/vqd_jax/blob/main/notebooks/"
         r"{}\.ipynb\)")


def _load(name: str) -> dict:
  with open(os.path.join(NOTEBOOK_DIR, f"{name}.ipynb"), encoding="utf-8") as f:
    return json.load(f)


def _source(cell: dict) -> str:
  return "".join(cell["source"])


def _generator(monkeypatch):
  """notebooks/generate.py, imported as its script run does: with notebooks/ on the path."""
  monkeypatch.syspath_prepend(NOTEBOOK_DIR)
  return importlib.import_module("generate")


def test_every_notebook_is_listed_and_matches_its_generator(monkeypatch):
  pytest.importorskip("nbformat", reason="the notebook tests need pip install -e '.[test]'")
  generate = _generator(monkeypatch)
  on_disk = sorted(f[:-len(".ipynb")] for f in os.listdir(NOTEBOOK_DIR) if f.endswith(".ipynb"))
  assert on_disk == sorted(NOTEBOOKS) == sorted(generate.NOTEBOOKS)
  for name in NOTEBOOKS:
    with open(os.path.join(NOTEBOOK_DIR, f"{name}.ipynb"), encoding="utf-8") as f:
      assert f.read() == generate.render(name), (
          f"notebooks/{name}.ipynb differs from its cells: edit notebooks/cells_{name}.py (or "
          "the shared parts in notebooks/shared_cells.py) and run python notebooks/generate.py")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_clean_with_badge_install_and_parameters(name):
  notebook = _load(name)
  cells = notebook["cells"]
  code_cells = [c for c in cells if c["cell_type"] == "code"]
  for cell in code_cells:
    assert cell["outputs"] == [] and cell["execution_count"] is None, (
        f"{name}: a cell is stored with its outputs: {_source(cell)[:80]!r}")
  assert cells[0]["cell_type"] == "markdown" and "colab-badge.svg" in _source(cells[0])
  assert re.search(COLAB.format(name), _source(cells[0])), f"{name}: no Open in Colab link"
  install = [i for i, c in enumerate(cells) if c["cell_type"] == "code"
             and "import vqd_jax\nexcept ImportError:" in _source(c) and "pip" in _source(c)]
  parameters = [i for i, c in enumerate(cells)
                if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(install) == 1 and len(parameters) == 1 and install[0] < parameters[0], name
  assert cells[parameters[0]]["cell_type"] == "code"
  assert "SMALL = " in _source(cells[parameters[0]])
  assert notebook["metadata"]["kernelspec"]["name"] == "python3"


# Each notebook runs in a process of its own: it reads a notebook, runs it in a kernel (cwd
# notebooks/) and writes it back with its outputs, also when a cell fails.
RUNNER = """
import sys, nbclient, nbformat
source, executed, cwd = sys.argv[1:]
notebook = nbformat.read(source, as_version=4)
try:
    nbclient.NotebookClient(notebook, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": cwd}}).execute()
finally:
    nbformat.write(notebook, executed)
"""


@pytest.fixture(scope="module")
def executions(request, tmp_path_factory):
  """``{name: future of (process, seconds, executed notebook path)}`` of the selected notebooks,
  two at a time; one that reuses the quickstart's runs starts once the quickstart has finished."""
  pytest.importorskip("nbclient", reason="the notebook tests need pip install -e '.[test]'")
  pytest.importorskip("ipykernel", reason="the notebook tests need pip install -e '.[test]'")
  pytest.importorskip("matplotlib", reason="the notebook tests need pip install -e '.[test]'")
  selected = [n for n in NOTEBOOKS if any(
      getattr(item, "originalname", "") == "test_notebook_runs_in_its_small_setting"
      and item.callspec.params["name"] == n for item in request.session.items)]
  out = tmp_path_factory.mktemp("notebooks")
  env = dict(os.environ, VQD_NOTEBOOK_SMALL="1", VQD_NOTEBOOK_RUNS=str(out / "runs"),
             JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("MPLBACKEND", None)  # the kernel's inline backend shows the figures
  futures = {}

  def execute(name):
    if REUSES.get(name) in futures:
      concurrent.futures.wait([futures[REUSES[name]]])
    executed = str(out / f"{name}.ipynb")
    start = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-c", RUNNER, os.path.join(NOTEBOOK_DIR, f"{name}.ipynb"), executed,
         NOTEBOOK_DIR], env=env, capture_output=True, text=True, timeout=3600, check=False)
    return process, time.perf_counter() - start, executed

  # A notebook is submitted after the one it waits for, so a waiting worker never blocks that one.
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    for name in selected:
      futures[name] = pool.submit(execute, name)
    yield futures


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_its_small_setting(name, executions):
  process, seconds, executed = executions[name].result()
  print(f"{name}: {seconds:.1f} s")
  if process.returncode:
    pytest.fail(f"{name}.ipynb failed after {seconds:.0f} s (executed copy: {executed}):\n"
                f"{process.stderr[-6000:]}")
  with open(executed, encoding="utf-8") as f:
    cells = json.load(f)["cells"]
  pictures = [o for c in cells if c["cell_type"] == "code" for o in c["outputs"]
              if "image/png" in o.get("data", {})]
  assert len(pictures) >= 2, f"{name} showed {len(pictures)} pictures"
