"""Writes the notebooks of this folder from their cells, those of NAME.ipynb in cells_NAME.py.

  python notebooks/generate.py            # rewrites every notebook
  python notebooks/generate.py --check    # exits 1 if a stored notebook differs from its cells

The notebooks are stored without outputs or execution counts; edit the cells in cells_NAME.py
(the parts every notebook shares: shared_cells.py), not the .ipynb files, and run this script
(tests/test_notebooks.py checks that they agree). Each notebook opens with an "Open in Colab"
badge, an install cell and a ``parameters`` cell (papermill's tag): ``SMALL`` picks the small
setting, a few dozen training steps that finish in minutes on a CPU (the test suite runs it:
``VQD_NOTEBOOK_SMALL=1``), and ``RUNS`` the folder the runs go to (``VQD_NOTEBOOK_RUNS``; the
notebooks that train reuse each other's runs in it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import nbformat



# The notebooks, in the order a user runs them. The cells of notebook NAME are ``cells()`` of
# notebooks/cells_NAME.py; the parts they share are in notebooks/shared_cells.py.
NOTEBOOKS = ("quickstart", "pretrained", "paint_and_experts", "vqd_vs_ar_ctf")
NOTEBOOK_DIR = os.path.dirname(os.path.abspath(__file__))


def cells(name: str) -> list[nbformat.NotebookNode]:
  """The cells of the notebook ``name``, from notebooks/cells_{name}.py."""
  return importlib.import_module(f"cells_{name}").cells()


def build(name: str) -> nbformat.NotebookNode:
  """The notebook ``name``: its cells, stable cell ids, no outputs."""
  notebook = nbformat.v4.new_notebook()
  notebook.cells = cells(name)
  for i, cell in enumerate(notebook.cells):
    cell.id = f"{name.replace('_', '-')}-{i:02d}"
  notebook.metadata = {
      "accelerator": "GPU",
      "colab": {"name": f"{name}.ipynb", "provenance": []},
      "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
      "language_info": {"name": "python"},
  }
  nbformat.validate(notebook)
  return notebook


def render(name: str) -> str:
  return nbformat.writes(build(name)) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true",
                      help="Report the notebooks that differ from their cells; write nothing.")
  args = parser.parse_args(argv)
  stale = []
  for name in NOTEBOOKS:
    path = os.path.join(NOTEBOOK_DIR, f"{name}.ipynb")
    text = render(name)
    current = open(path, encoding="utf-8").read() if os.path.exists(path) else None
    if current != text:
      stale.append(path)
      if not args.check:
        with open(path, "w", encoding="utf-8") as f:
          f.write(text)
  if args.check and stale:
    print("Differ from their cells (run python notebooks/generate.py):", *stale, sep="\n  ")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
