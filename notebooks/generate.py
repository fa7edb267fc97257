"""Writes the notebooks of this folder from the cells below.

  python notebooks/generate.py            # rewrites every notebook
  python notebooks/generate.py --check    # exits 1 if a stored notebook differs from its cells

The notebooks are stored without outputs or execution counts; edit the cells here, not the
.ipynb files, and run this script (tests/test_notebooks.py checks that they agree). Each notebook
opens with an "Open in Colab" badge, an install cell and a ``parameters`` cell (papermill's tag):
``SMALL`` picks the small setting, a few dozen training steps that finish in minutes on a CPU
(the test suite runs it: ``VQD_NOTEBOOK_SMALL=1``), and ``RUNS`` the folder the runs go to
(``VQD_NOTEBOOK_RUNS``; the notebooks that train reuse each other's runs in it).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

import nbformat

# The GitHub repository the badges open and the install cell installs from: replace OWNER with
# the account that hosts vqd_jax, then run this script.
GITHUB_REPO = "OWNER/vqd_jax"
NOTEBOOK_DIR = os.path.dirname(os.path.abspath(__file__))
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


def quickstart_notebook() -> list[nbformat.NotebookNode]:
  return [
      title("quickstart", "vqd_jax quickstart: text-to-image from nothing", """
          This notebook trains VQ-Diffusion's two models on procedurally drawn, captioned shapes
          ("a small red circle to the left of a large blue square"), draws pictures for captions
          it never saw during training, and scores them:

          1. a **VQ autoencoder** that turns a 32x32 image into an 8x8 grid of codebook tokens;
          2. the training images **encoded** once into tokens;
          3. a **denoiser**, a text-conditioned transformer that learns to undo VQ-Diffusion's
             *mask-and-replace* corruption of the tokens;
          4. **sampling** of held-out captions, and the **shapes score**: the fraction of
             pictures with every object, colour, size, shape and relation right.

          The full setting takes about 11 minutes on a 2-core CPU and scores about 0.66; a GPU or
          TPU runtime (Runtime > Change runtime type) is faster. Re-running a cell resumes a
          stage that was interrupted and skips a stage that finished.
      """),
      INSTALL,
      md(SETTINGS_TEXT),
      parameters("about 1-2 minutes on a CPU",
                 "the quickstart (about 11 minutes on a 2-core CPU)."),
      md("""
          ## Train

          One call runs every stage, as `python -m vqd_jax.quickstart --workdir WORKDIR` does
          on the command line. Stages write to `WORKDIR/vqvae`, `WORKDIR/tokens` and
          `WORKDIR/diffusion`; samples go to `WORKDIR/samples` and the timings and score to
          `WORKDIR/quickstart.json`. Flags such as `--diffusion.train.num_steps=2000` override
          a stage's config (`python -m vqd_jax.quickstart --help` lists them).
      """),
      code(SMALL_SETUP, '''

          print("python -m vqd_jax.quickstart", *quickstart_flags())
          exit_code = quickstart.main(quickstart_flags())
      '''),
      md("""
          ## Loss curves

          Every run appends its logged metrics to `metrics.jsonl` (and TensorBoard events): the
          autoencoder's reconstruction loss and the denoiser's loss (its variational bound plus
          the weighted x0 prediction loss). The denoiser's first steps (the layout warm-up) draw
          only nearly fully masked timesteps, so its loss jumps when the warm-up ends.
      """),
      code(SHOW_HELPERS, '''
          import json


          def read_metrics(run):
              with open(os.path.join(WORKDIR, run, "metrics.jsonl"), encoding="utf-8") as f:
                  return [json.loads(line) for line in f]


          fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
          for ax, run, key in ((axes[0], "vqvae", "recon_loss"), (axes[1], "diffusion", "loss")):
              rows = read_metrics(run)
              ax.plot([r["step"] for r in rows], [r[key] for r in rows])
              ax.set(title=f"{run}: {key}", xlabel="step", yscale="log")
          plt.tight_layout()
          plt.show()
      '''),
      md("""
          ## Held-out samples

          One picture per held-out caption (the scorer's verdict in the title: green when every
          object, colour, size, shape and relation is right).
      """),
      code('''
          with open(os.path.join(WORKDIR, "quickstart.json"), encoding="utf-8") as f:
              result = json.load(f)
          verdicts = result["score"]["samples"][:16]
          cols = min(8, len(verdicts))
          rows = -(-len(verdicts) // cols)
          fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.5 * rows), squeeze=False)
          for ax, record in zip(axes.flat, verdicts):
              ax.imshow(Image.open(os.path.join(WORKDIR, "samples", record["file"])),
                        interpolation="nearest")
              ax.set_title(record["prompt"].replace(" to the", "\\nto the")
                           .replace(" above", "\\nabove").replace(" below", "\\nbelow"),
                           fontsize=7, color="green" if record["correct"] else "red")
          for ax in axes.flat:
              ax.axis("off")
          plt.tight_layout()
          plt.show()
      '''),
      md("""
          ## Shapes score

          The fraction of pictures that are entirely right, and the accuracy of each attribute
          (relations over two-object captions only). With 300 prompts one standard error is
          about 0.025.
      """),
      code('''
          score = result["score"]
          names = ["score", "count_accuracy", "color_accuracy", "shape_accuracy", "size_accuracy",
                   "relation_accuracy", "single_object_score", "two_object_score"]
          values = [score[n] if score[n] is not None else 0.0 for n in names]
          plt.figure(figsize=(8, 2.6))
          plt.barh(names[::-1], values[::-1], color="tab:blue")
          plt.xlim(0, 1)
          plt.title(f"shapes score {score['score']:.3f} ({score['num_samples']} held-out prompts)")
          plt.show()
          print("minutes per stage:", {k[:-len("_s")]: round(v / 60, 2)
                                        for k, v in result["timings"].items() if k.endswith("_s")})
      '''),
      md("""
          ## Your own captions

          `VQDiffusionPipeline.from_run` loads the trained denoiser with its text encoder and
          autoencoder; calling it turns captions into uint8 images. `num_inference_steps` below
          the 100 training timesteps samples with the exact skip posterior, `guidance_scale` is
          classifier-free guidance with the learned null caption (1 = off) and
          `truncation_rate` keeps only the most likely tokens' probability mass at each step.
      """),
      code('''
          from vqd_jax.inference import VQDiffusionPipeline

          pipe = VQDiffusionPipeline.from_run(os.path.join(WORKDIR, "diffusion"))
          prompts = ["a large red circle", "a small blue square above a large yellow triangle",
                     "a large green triangle to the left of a small white circle",
                     "a small magenta circle", "a large cyan square", "a small yellow triangle",
                     "a small red square below a large blue circle",
                     "a large white triangle to the right of a small green square"]
          defaults = pipe.sampling_defaults
          images = pipe(prompts, num_inference_steps=defaults["num_steps"],
                        guidance_scale=defaults["guidance_scale"],
                        truncation_rate=defaults["truncation_rate"], seed=0)
          for i in (0, 4):
              show_images([images[i:i + 4]], col_titles=prompts[i:i + 4], size=2.4)
      '''),
      md("""
          ## Next

          * `paint_and_experts.ipynb`: place objects with paint-with-words, and split the
            denoiser into expert denoisers by noise level (eDiff-I).
          * `vqd_vs_ar_ctf.ipynb`: an autoregressive and a CTF model on the same tokens.
          * `pretrained.ipynb`: sample from the published `microsoft/vq-diffusion-ithq` weights.
          * The command lines behind each stage (`python -m vqd_jax.train`, `encode`, `sample`,
            `evaluate`) are in the README.
      """),
  ]


def pretrained_notebook() -> list[nbformat.NotebookNode]:
  return [
      title("pretrained", "Sampling a pretrained VQ-Diffusion checkpoint", """
          vqd_jax loads a local folder in the diffusers layout of VQ-Diffusion
          (`vqvae/`, `transformer/`, `text_encoder/`, `tokenizer/`, `scheduler/`,
          `learned_classifier_free_sampling_embeddings/`) and samples it in JAX: with
          classifier-free guidance, truncation, and inpainting. It reads local files only
          (safetensors) and downloads nothing itself.

          A GPU or TPU runtime is needed for the 256x256 ITHQ model (Runtime > Change runtime
          type); the small setting samples a tiny random-weight folder instead, on any CPU.
      """),
      INSTALL,
      md("""
          ## Download the weights

          Download `microsoft/vq-diffusion-ithq` (a few GB) once, in a terminal or in a cell
          whose lines start with `!`:

          ```bash
          pip install -U "huggingface_hub[cli]"
          huggingface-cli download microsoft/vq-diffusion-ithq \\
              --local-dir /content/vq-diffusion-ithq
          ```

          and point `PRETRAINED` at that folder. `SMALL = True` (the environment variable
          `VQD_NOTEBOOK_SMALL=1`) ignores `PRETRAINED` and writes a tiny folder of the same
          layout with random weights (its pictures are noise), so that every cell runs without
          the download.
      """),
      parameters("about a minute on a CPU",
                 "sample the folder PRETRAINED (on a GPU or TPU runtime).", '''
          # The downloaded diffusers folder (the one holding model_index.json).
          PRETRAINED = "/content/vq-diffusion-ithq"
      '''),
      code('''
          import importlib.util
          import tempfile

          if SMALL:
              # A random-weight folder of the same layout, written by diffusers (with torch,
              # which Colab has installed).
              if importlib.util.find_spec("diffusers") is None:
                  pip_install("diffusers")
              from vqd_jax.benchmarks import random_diffusers

              PRETRAINED = os.path.join(tempfile.mkdtemp(), "tiny-vq-diffusion")
              sizes = random_diffusers.RandomPipelineSizes(
                  num_codes=64, token_side=8, num_layers=1, num_heads=2, head_dim=16,
                  text_width=32, text_layers=1, text_heads=2, vq_channels=(16, 16, 32),
                  vq_layers_per_block=1, vq_embed_dim=8, vq_latent_channels=8, vq_norm_groups=8)
              random_diffusers.save_random_pipeline(PRETRAINED, sizes)
          if not os.path.exists(os.path.join(PRETRAINED, "model_index.json")):
              raise FileNotFoundError(f"No diffusers folder at {PRETRAINED}: download it first "
                                      "(see above), or set SMALL = True.")
          print(sorted(os.listdir(PRETRAINED)))
      '''),
      md("""
          ## Load

          `VQDiffusionPipeline.from_pretrained` reads every component and checks that they fit
          together (a missing file is an error naming it). `python -m vqd_jax.convert check
          FOLDER` prints the same components and shapes from the command line.
      """),
      code('''
          import time

          from vqd_jax.inference import VQDiffusionPipeline

          t0 = time.perf_counter()
          pipe = VQDiffusionPipeline.from_pretrained(PRETRAINED)
          print(f"loaded in {time.perf_counter() - t0:.1f} s: {pipe.image_size} images from "
                f"{pipe.token_grid} tokens over {pipe.num_codes} codes, T = {pipe.num_timesteps}, "
                f"text encoder: {pipe.text_kind}")
      '''),
      md("""
          ## Sample with guidance and truncation

          `guidance_scale` mixes the caption's prediction with the learned null caption's
          (ITHQ's published setting is 5; 1 turns guidance off), and `truncation_rate` keeps the
          top of p(x0 | x_t) at each step (0.86 with the ITHQ model; 1 = off).
          `num_inference_steps` below T = 100 uses the exact skip posterior. The first call of
          each setting compiles the sampler; later calls with the same setting and batch size
          reuse it.
      """),
      code(SHOW_HELPERS, '''

          STEPS = 10 if SMALL else 100
          prompts = ["teddy bear playing in the pool", "a red sofa in a bright living room",
                     "a lighthouse on a cliff at sunset", "a bowl of fruit on a wooden table"]
          t0 = time.perf_counter()
          images = pipe(prompts, num_inference_steps=STEPS, guidance_scale=5.0,
                        truncation_rate=0.86, seed=0)
          print(f"{len(prompts)} images in {time.perf_counter() - t0:.1f} s (compilation included)")
          show_images([images], col_titles=prompts, size=3)
      '''),
      md("""
          ### What guidance and truncation change

          The same captions and seed with guidance off, guidance 5, and guidance 5 with
          truncation 0.86 (the pictures above; each new setting compiles its own sampler).
      """),
      code('''
          variants = {"guidance 1": pipe(prompts, num_inference_steps=STEPS, guidance_scale=1.0,
                                         truncation_rate=1.0, seed=0),
                      "guidance 5": pipe(prompts, num_inference_steps=STEPS, guidance_scale=5.0,
                                         truncation_rate=1.0, seed=0),
                      "guidance 5, truncation 0.86": images}
          show_images([[row[i] for row in variants.values()] for i in range(len(prompts))],
                      row_titles=prompts, col_titles=list(variants), size=2.4)
      '''),
      md("""
          ## Inpainting

          `init_image` (uint8, at the model's resolution) with `inpaint_mask` (pixels, True =
          regenerate; every token whose patch touches the region is redrawn) keeps the rest of
          the picture and regenerates the masked part for a new caption. Here the right half of
          the first picture above is redrawn.
      """),
      code('''
          height, width = pipe.image_size
          mask = np.zeros((height, width), bool)
          mask[:, width // 2:] = True
          edited = pipe(["a teddy bear next to a blue beach ball"], init_image=images[0],
                        inpaint_mask=mask, num_inference_steps=STEPS, guidance_scale=5.0,
                        truncation_rate=0.86, seed=2)
          kept = np.where(mask[..., None], np.uint8(128), images[0])  # the masked part in grey
          show_images([[images[0], kept, edited[0]]],
                      col_titles=["original", "kept (grey: regenerated)", "inpainted"], size=3)
      '''),
      md("""
          ## From the command line

          ```bash
          python -m vqd_jax.sample --pretrained /content/vq-diffusion-ithq \\
              --prompt "teddy bear playing in the pool" --num-samples 4 --steps 100 \\
              --guidance 5 --truncation 0.86 --out samples/
          python -m vqd_jax.sample --pretrained /content/vq-diffusion-ithq --prompt "a red sofa" \\
              --init-image room.png --mask sofa_mask.png --out edits/
          ```

          `python -m vqd_jax.convert export --workdir RUN --out FOLDER` writes a run trained with
          vqd_jax in the same layout.
      """),
  ]


def paint_and_experts_notebook() -> list[nbformat.NotebookNode]:
  return [
      title("paint_and_experts", "Paint-with-words and expert denoisers", """
          Two ideas of eDiff-I, carried over to VQ-Diffusion on the quickstart's shapes:

          * **paint-with-words** puts a phrase of the caption where a mask says, with no
            training: the sampler raises the phrase's cross-attention logits inside the mask
            (and lowers them outside);
          * **expert denoisers** split the 100 timesteps into intervals, each owned by a copy of
            the denoiser fine-tuned on its own interval; a sampling step runs only the expert
            that owns it, so sampling costs the same as with one denoiser.

          Both start from the quickstart's trained denoiser: this notebook reuses the run of
          `quickstart.ipynb` in `RUNS`, or trains it first.
      """),
      INSTALL,
      md(SETTINGS_TEXT),
      parameters("about 1-2 minutes on a CPU", "the quickstart's run and 1,500 expert steps "
                 "(about 17 minutes on a 2-core CPU).", '''
          # Paint-with-words strength w (the bias is w * f(t) * max(QK^T / sqrt(d))).
          PAINT_WEIGHT = 0.5
      '''),
      md("""
          ## The base denoiser

          The quickstart's run (`python -m vqd_jax.quickstart`), trained here unless `RUNS`
          already holds it.
      """),
      code(SMALL_SETUP, '''

          BASE = os.path.join(WORKDIR, "diffusion")
          if not os.path.exists(os.path.join(WORKDIR, "quickstart.json")):
              quickstart.main(quickstart_flags())
      '''),
      md("""
          ## Paint-with-words

          A mask per phrase (white = put the phrase here; any size, grey = partial) is averaged
          onto the 8x8 token grid. Every phrase must appear in its caption.
      """),
      code(SHOW_HELPERS, '''
          from vqd_jax.data.shapes import COLORS
          from vqd_jax.inference import VQDiffusionPipeline

          pipe = VQDiffusionPipeline.from_run(BASE)
          height, width = pipe.image_size


          def box(top, left, bottom, right):
              """A mask painting the box given in fractions of the image."""
              mask = np.zeros((height, width), np.float32)
              rows = slice(round(top * height), round(bottom * height))
              mask[rows, round(left * width):round(right * width)] = 1
              return mask


          # (caption, {phrase: mask}): one object in two places, and a pair placed apart.
          cases = [("a large red circle", {"large red circle": box(0, 0, 0.6, 0.6)}),
                   ("a large red circle", {"large red circle": box(0.4, 0.4, 1, 1)}),
                   ("a small blue square to the right of a large yellow triangle",
                    {"small blue square": box(0.3, 0.6, 0.7, 1),
                     "large yellow triangle": box(0.15, 0, 0.85, 0.55)}),
                   ("a small green circle above a large magenta square",
                    {"small green circle": box(0, 0.3, 0.4, 0.7),
                     "large magenta square": box(0.45, 0.2, 1, 0.8)})]


          def mask_picture(paint):
              """The masks of one caption on grey, each in the colour its phrase names."""
              picture = np.full((height, width, 3), 220, np.uint8)
              for phrase, mask in paint.items():
                  colour = next(c for name, c in COLORS.items() if name in phrase.split())
                  picture[mask > 0.5] = colour
              return picture


          show_images([[mask_picture(paint) for _, paint in cases]],
                      col_titles=[" / ".join(paint) for _, paint in cases], size=2.4)
      '''),
      md("""
          The same captions and seeds, sampled without and with the masks.
          `paint_weight` sets the strength; `paint_outside` (default 1) also pushes the phrase
          away from the rest of the image, 0 being eDiff-I's inside-only rule. On the full
          quickstart run, `w = 0.5` puts 0.84 of single objects in their box against 0.27
          unpainted (`python -m vqd_jax.evaluate paint` measures it).
      """),
      code('''
          SAMPLES = 2
          defaults = pipe.sampling_defaults
          settings = dict(num_inference_steps=defaults["num_steps"],
                          guidance_scale=defaults["guidance_scale"],
                          truncation_rate=defaults["truncation_rate"], seed=0)
          prompts = [prompt for prompt, _ in cases for _ in range(SAMPLES)]
          plain = pipe(prompts, **settings)
          painted = pipe(prompts, paint=[paint for _, paint in cases for _ in range(SAMPLES)],
                         paint_weight=PAINT_WEIGHT, **settings)
          rows = [[mask_picture(paint), *plain[i * SAMPLES:(i + 1) * SAMPLES],
                   *painted[i * SAMPLES:(i + 1) * SAMPLES]] for i, (_, paint) in enumerate(cases)]
          titles = ["masks"] + ["unpainted"] * SAMPLES + [f"painted, w={PAINT_WEIGHT}"] * SAMPLES
          show_images(rows, row_titles=[prompt for prompt, _ in cases], col_titles=titles)
      '''),
      md("""
          ## Expert denoisers

          `configs/diffusion.py:shapes_experts` splits the timesteps into three experts
          (eDiff-I's tree over uniform t: the lowest-noise quarter, the middle half, the
          highest-noise quarter) and fine-tunes each from the base run (`init_from`) on its own
          interval. On the command line:

          ```bash
          python -m vqd_jax.train --config configs/diffusion.py:shapes_experts --workdir EXPERTS \\
              --config.init_from=BASE --config.vqvae_workdir=WORKDIR/vqvae \\
              --config.data.source=tokens --config.data.path=WORKDIR/tokens
          ```
      """),
      code('''
          from vqd_jax import build, configs_io
          from vqd_jax.training import loop

          EXPERTS = os.path.join(WORKDIR, "experts")
          overrides = [f"init_from={BASE}", f"vqvae_workdir={os.path.join(WORKDIR, 'vqvae')}",
                       "data.source=tokens", f"data.path={os.path.join(WORKDIR, 'tokens')}"]
          if SMALL:  # the base's one-layer transformers, and a few steps
              overrides += ["model.num_layers=1", "text.num_layers=1", "data.num_examples=512",
                            "train.num_steps=20", "train.batch_size=24", "optim.warmup_steps=5",
                            "train.log_every=5", "train.ckpt_every=20", "train.sample_every=0",
                            "sampling.num_steps=10"]
          config = configs_io.load_config("configs/diffusion.py:shapes_experts", overrides)
          loop.train_and_evaluate(config, EXPERTS)

          intervals = build.expert_intervals(config)
          fig, ax = plt.subplots(figsize=(9, 1.4))
          for e in range(intervals.num_experts):
              first, last = intervals.interval(e)
              ax.barh(0, last - first + 1, left=first, color=f"C{e}")
              ax.text((first + last + 1) / 2, 0, f"expert {e}\\nt = {first}..{last}", ha="center",
                      va="center", fontsize=9, color="white")
          ax.set(xlim=(0, intervals.num_timesteps), yticks=[],
                 xlabel="timestep t (0 = clean tokens, T - 1 = all masked)")
          plt.show()
      '''),
      md("""
          ### One denoiser against three experts

          The base run and the experts fine-tuned from it, on the same held-out captions and
          seed (300 in the full setting), with their shapes scores; a sampling step calls only
          its expert. At this scale the experts gave no gain: 0.642 against 0.677 for the single
          denoiser fine-tuned on the same examples (1,000 captions, one standard error 0.015).
      """),
      code('''
          from vqd_jax import diffusion, sample
          from vqd_jax.evaluation import shapes as shapes_eval

          experts = VQDiffusionPipeline.from_run(EXPERTS)
          prompts = shapes_eval.heldout_prompts(8 if SMALL else 300, height)
          scores, pictures = {}, {}
          for name, model, folder in (("one denoiser", pipe, "samples"),
                                      ("three experts", experts, "samples_experts")):
              out = os.path.join(WORKDIR, folder)
              if name == "three experts" or not os.path.exists(os.path.join(out, "samples.jsonl")):
                  settings = diffusion.SamplerConfig(**model.sampling_defaults)
                  sample.generate_to_folder(model, prompts, out, num_samples=1, seed=0,
                                            settings=settings)
              scores[name] = shapes_eval.evaluate_folder(out)["score"]
              pictures[name] = [np.asarray(Image.open(os.path.join(out, f"{i:05d}.png")))
                                for i in range(6)]
          show_images(list(pictures.values()),
                      row_titles=[f"{n}\\nscore {s:.3f}" for n, s in scores.items()],
                      col_titles=prompts[:6], size=2)
      '''),
  ]


def vqd_vs_ar_ctf_notebook() -> list[nbformat.NotebookNode]:
  return [
      title("vqd_vs_ar_ctf", "VQ-Diffusion, autoregressive and CTF on the same tokens", """
          The VQ-Diffusion paper compares its denoiser with an autoregressive (AR) transformer
          that writes the tokens one by one in raster order; CTF first draws coarse labels
          (clusters of the codebook) with an AR model, then every code at once. This notebook
          trains the three on the same autoencoder and tokens, for about the same minutes each
          on a CPU (the shapes presets), and compares their pictures, speed and shapes score.

          The autoencoder, the tokens and the VQ-Diffusion run are those of `quickstart.ipynb`:
          a run already in `RUNS` is reused.
      """),
      INSTALL,
      md(SETTINGS_TEXT),
      parameters("about 2 minutes on a CPU",
                 "the shapes presets (about 25 minutes on a 2-core CPU)."),
      md("""
          ## Train

          `python -m vqd_jax.quickstart --model vqd|ar|ctf` trains the token models of each on
          the shared autoencoder and tokens: `WORKDIR/diffusion`, `WORKDIR/ar`, and CTF's
          `WORKDIR/ctf_coarse` and `WORKDIR/ctf_fine`; each samples and scores the same
          held-out captions (`WORKDIR/samples`, `samples_ar`, `samples_ctf`).
      """),
      code(SMALL_SETUP, '''

          MODELS = {"VQD": "vqd", "AR": "ar", "CTF": "ctf"}
          # The run folders of each model, and the suffix of its samples and quickstart json.
          RUN_FOLDERS = {"vqd": ["diffusion"], "ar": ["ar"], "ctf": ["ctf_coarse", "ctf_fine"]}
          SUFFIX = {"vqd": "", "ar": "_ar", "ctf": "_ctf"}
          for model in MODELS.values():
              if not os.path.exists(os.path.join(WORKDIR, f"quickstart{SUFFIX[model]}.json")):
                  print("python -m vqd_jax.quickstart", *quickstart_flags(model))
                  exit_code = quickstart.main(quickstart_flags(model))
      '''),
      md("""
          ## Pictures side by side

          The first held-out captions, one column per model (green: the scorer finds every
          object, colour, size, shape and relation right).
      """),
      code(SHOW_HELPERS, '''
          import json

          results = {}
          for name, model in MODELS.items():
              path = os.path.join(WORKDIR, f"quickstart{SUFFIX[model]}.json")
              with open(path, encoding="utf-8") as f:
                  results[name] = dict(json.load(f),
                                       samples=os.path.join(WORKDIR, "samples" + SUFFIX[model]))

          ROWS = 6
          fig, axes = plt.subplots(ROWS, len(results), figsize=(2 * len(results) + 2, 2 * ROWS),
                                   squeeze=False)
          for j, (name, result) in enumerate(results.items()):
              for i, record in enumerate(result["score"]["samples"][:ROWS]):
                  ax = axes[i][j]
                  ax.imshow(Image.open(os.path.join(result["samples"], record["file"])),
                            interpolation="nearest")
                  ax.set(xticks=[], yticks=[])
                  for spine in ax.spines.values():  # the scorer's verdict
                      spine.set(color="green" if record["correct"] else "red", linewidth=3)
                  if i == 0:
                      ax.set_title(name)
                  if j == 0:
                      ax.set_ylabel(textwrap.fill(record["prompt"], 22), rotation=0, ha="right",
                                    va="center", fontsize=8)
          plt.tight_layout()
          plt.show()
      '''),
      md("""
          ## Speed and score

          Images per second of each pipeline, prompts to decoded pictures with the run's own
          sampling settings (VQD: 50 guided steps; AR: one cached step per token; CTF: the
          coarse AR pass, then one fine pass), timed after a first call that compiles it. The
          training minutes are those each run logged in its `metrics.jsonl` (compilation
          included).
          `python -m vqd_jax.bench models --trained WORKDIR` adds FLOPs and more batch sizes.
      """),
      code('''
          import time

          import jax
          from IPython.display import Markdown, display

          from vqd_jax import diffusion
          from vqd_jax.evaluation import shapes as shapes_eval
          from vqd_jax.inference import ARPipeline, CTFPipeline, VQDiffusionPipeline


          def load(model):
              """A model's pipeline and its run's sampling settings."""
              if model == "vqd":
                  pipe = VQDiffusionPipeline.from_run(os.path.join(WORKDIR, "diffusion"))
                  return pipe, diffusion.SamplerConfig(**pipe.sampling_defaults)
              if model == "ar":
                  pipe = ARPipeline.from_run(os.path.join(WORKDIR, "ar"))
              else:
                  pipe = CTFPipeline.from_runs(os.path.join(WORKDIR, "ctf_coarse"),
                                               os.path.join(WORKDIR, "ctf_fine"))
              return pipe, pipe.settings()


          def training_minutes(model):
              """Minutes of training the model's runs logged last in their metrics.jsonl."""
              minutes = 0.0
              for folder in RUN_FOLDERS[model]:
                  with open(os.path.join(WORKDIR, folder, "metrics.jsonl"), encoding="utf-8") as f:
                      minutes += json.loads(f.readlines()[-1])["minutes"]
              return minutes


          prompts = [r["prompt"] for r in results["VQD"]["score"]["samples"]][:8 if SMALL else 32]
          table = ["| model | images/s | shapes score | training minutes |", "|---|---|---|---|"]
          speeds = {}
          for name, model in MODELS.items():
              pipe, settings = load(model)
              run = lambda seed: pipe.generate(pipe.params, prompts, jax.random.key(seed), settings)
              run(0)  # compiles
              t0 = time.perf_counter()
              run(1)
              speeds[name] = speed = len(prompts) / (time.perf_counter() - t0)
              score = results[name]["score"]
              table.append(f"| {name} | {speed:.1f} | {score['score']:.3f} ({score['num_samples']} "
                           f"prompts) | {training_minutes(model):.1f} |")
          display(Markdown("\\n".join(table)))

          fig, axes = plt.subplots(1, 2, figsize=(9, 2.6))
          axes[0].bar(list(speeds), list(speeds.values()), color=["C0", "C1", "C2"])
          axes[0].set(title=f"images/s (batch {len(prompts)}, {jax.default_backend()})")
          axes[1].bar(list(results), [r["score"]["score"] for r in results.values()],
                      color=["C0", "C1", "C2"])
          axes[1].set(title="shapes score", ylim=(0, 1))
          plt.tight_layout()
          plt.show()
      '''),
      md("""
          On the full settings and a 2-core CPU, the README's comparison found AR ahead of
          VQ-Diffusion at equal minutes on this data (0.703 against 0.635) and CTF behind
          (0.393); VQ-Diffusion at 25 steps is 52x faster than the uncached AR at the paper's
          scale (`python -m vqd_jax.bench models --scale S`).
      """),
  ]


NOTEBOOKS = {
    "quickstart": quickstart_notebook,
    "pretrained": pretrained_notebook,
    "paint_and_experts": paint_and_experts_notebook,
    "vqd_vs_ar_ctf": vqd_vs_ar_ctf_notebook,
}


def build(name: str) -> nbformat.NotebookNode:
  """The notebook ``name``: its cells, stable cell ids, no outputs."""
  notebook = nbformat.v4.new_notebook()
  notebook.cells = NOTEBOOKS[name]()
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
    print("Differ from notebooks/generate.py (run it):", *stale, sep="\n  ")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
