"""The cells of notebooks/vqd_vs_ar_ctf.ipynb, which notebooks/generate.py writes: VQ-Diffusion,
autoregressive and coarse-to-fine models on the same tokens, by score, speed and training minutes.
"""

from __future__ import annotations

import nbformat

from shared_cells import (INSTALL, SETTINGS_TEXT, SHOW_HELPERS, SMALL_SETUP, code, md, parameters,
                          title)


def cells() -> list[nbformat.NotebookNode]:
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
