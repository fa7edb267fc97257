"""The cells of notebooks/pretrained.ipynb, which notebooks/generate.py writes: a local
diffusers-layout VQ-Diffusion folder sampled with guidance, truncation and inpainting.
"""

from __future__ import annotations

import nbformat

from shared_cells import INSTALL, SHOW_HELPERS, code, md, parameters, title


def cells() -> list[nbformat.NotebookNode]:
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
