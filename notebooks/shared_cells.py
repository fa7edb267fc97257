"""The parts every notebook shares (badge, install, parameters and helper cells) and the cell
builders ``md`` and ``code``, imported by the cells_NAME.py modules."""

from __future__ import annotations

import os
import textwrap

import nbformat

# The GitHub repository the badges open and the install cell installs from: replace OWNER with
# the account that hosts vqd_jax, then run this script.
GITHUB_REPO = "OWNER/vqd_jax"
COLAB_URL = f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/main/notebooks/{{}}.ipynb"
BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({})"


def _text(source: str) -> str:
  return textwrap.dedent(source).strip("\n")


def md(source: str) -> nbformat.NotebookNode:
  return nbformat.v4.new_markdown_cell(_text(source))


def code(*sources: str) -> nbformat.NotebookNode:
  """A code cell of ``sources``, each dedented on its own, one after the other."""
  return nbformat.v4.new_code_cell("\n\n".join(filter(None, map(_text, sources))))


def title(name: str, heading: str, intro: str) -> nbformat.NotebookNode:
  return md(f"# {heading}\n\n{BADGE.format(COLAB_URL.format(name))}\n\n{_text(intro)}")


INSTALL = code(f'''
    # Installs vqd_jax unless it is importable already (a clone after `pip install -e .` skips
    # this). On a GPU runtime it then installs jax[cuda12], on a TPU runtime jax[tpu].
    import glob, importlib, importlib.util, shutil, subprocess, sys

    VQD_JAX_GIT = "git+https://github.com/{GITHUB_REPO}"


    def pip_install(*args):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


    try:
        import vqd_jax
    except ImportError:
        pip_install(f"vqd_jax @ {{VQD_JAX_GIT}}")
        if shutil.which("nvidia-smi"):
            pip_install("-U", "jax[cuda12]")
        elif glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
            pip_install("-U", "jax[tpu]")
        importlib.invalidate_caches()
        import vqd_jax
    if importlib.util.find_spec("matplotlib") is None:
        pip_install("matplotlib")
''')

SETTINGS_TEXT = """
    ## Settings

    `SMALL = True` runs every stage for a few dozen steps with one-layer transformers: it finishes
    in a minute or two on a CPU and checks that everything runs, but the pictures are still noise.
    `SMALL = False` uses the quickstart's own settings. The runs go to `RUNS` (a run that already
    exists there is reused, not trained again). The environment variables `VQD_NOTEBOOK_SMALL=1`
    and `VQD_NOTEBOOK_RUNS` set both without editing the notebook.
"""


def parameters(small: str, full: str, extra: str = "") -> nbformat.NotebookNode:
  """The ``parameters`` cell: ``SMALL`` (``small``: its time, ``full``: what False runs), ``RUNS``
  and the notebook's own ``extra`` lines."""
  cell = code(f'''
      import os

      # True: the small setting ({small}; the test suite runs it).
      # False: {full}
      SMALL = os.environ.get("VQD_NOTEBOOK_SMALL", "0") == "1"
      # Where the runs are written (and found again when this notebook is run a second time).
      RUNS = os.environ.get("VQD_NOTEBOOK_RUNS", "runs")
  ''', extra)
  cell.metadata["tags"] = ["parameters"]
  return cell


# The small setting: every stage shortened (quickstart flags; identical in every notebook, so
# the notebooks reuse each other's runs and compiled programs).
SMALL_SETUP = '''
    import os

    from absl import logging

    from vqd_jax import quickstart

    logging.set_verbosity(logging.ERROR)  # orbax logs a warning for every checkpoint it reads

    WORKDIR = os.path.join(RUNS, "quickstart_small" if SMALL else "quickstart")


    def quickstart_flags(model="vqd"):
        """Flags of `python -m vqd_jax.quickstart` for `model` in this notebook's setting."""
        flags = ["--workdir", WORKDIR, "--model", model]
        if not SMALL:
            return flags
        flags += ["--num-prompts=8", "--vqvae.train.num_steps=40", "--vqvae.loss.warmup_steps=20",
                  "--vqvae.optim.warmup_steps=5", "--vqvae.train.log_every=5",
                  "--vqvae.train.ckpt_every=40", "--vqvae.train.sample_every=0"]
        short = {"model.num_layers": 1, "text.num_layers": 1, "data.num_examples": 512,
                 "train.num_steps": 30, "optim.warmup_steps": 5, "train.log_every": 5,
                 "train.ckpt_every": 30, "train.sample_every": 0}
        stages = {"vqd": ["diffusion"], "ar": ["ar"], "ctf": ["coarse", "fine"]}[model]
        for stage in stages:
            flags += [f"--{stage}.{field}={value}" for field, value in short.items()]
        if model == "vqd":
            flags += ["--diffusion.diffusion.layout_warmup_steps=15",
                      "--diffusion.sampling.num_steps=10"]
        return flags
'''

SHOW_HELPERS = '''
    import textwrap

    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image


    def show_images(rows, row_titles=(), col_titles=(), size=1.6):
        """A figure of image rows (uint8 [H, W, 3] each), titled by row and column."""
        rows = [list(r) for r in rows]
        cols = max(len(r) for r in rows)
        fig, axes = plt.subplots(len(rows), cols, figsize=(size * cols, size * len(rows)),
                                 squeeze=False)
        for i, row in enumerate(rows):
            for j in range(cols):
                ax = axes[i][j]
                ax.axis("off")
                if j < len(row):
                    ax.imshow(row[j], interpolation="nearest")
                if i == 0 and j < len(col_titles):
                    ax.set_title(textwrap.fill(col_titles[j], 24), fontsize=8)
            if i < len(row_titles):
                axes[i][0].text(-0.1, 0.5, textwrap.fill(row_titles[i], 24), ha="right",
                                va="center", fontsize=8, transform=axes[i][0].transAxes)
        plt.tight_layout()
        plt.show()
'''
