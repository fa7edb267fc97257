"""The cells of notebooks/quickstart.ipynb, which notebooks/generate.py writes: the autoencoder,
tokens and denoiser trained on captioned shapes, their loss curves, samples and shapes score.
"""

from __future__ import annotations

import nbformat

from shared_cells import (INSTALL, SETTINGS_TEXT, SHOW_HELPERS, SMALL_SETUP, code, md, parameters,
                          title)


def cells() -> list[nbformat.NotebookNode]:
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
