"""The cells of notebooks/paint_and_experts.ipynb, which notebooks/generate.py writes:
paint-with-words and expert denoisers on the quickstart's runs.
"""

from __future__ import annotations

import nbformat

from shared_cells import (INSTALL, SETTINGS_TEXT, SHOW_HELPERS, SMALL_SETUP, code, md, parameters,
                          title)


def cells() -> list[nbformat.NotebookNode]:
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
          cases = [("a large red circle", {"a large red circle": box(0, 0, 0.6, 0.6)}),
                   ("a large red circle", {"a large red circle": box(0.4, 0.4, 1, 1)}),
                   ("a small blue square to the right of a large yellow triangle",
                    {"a small blue square": box(0.3, 0.6, 0.7, 1),
                     "a large yellow triangle": box(0.15, 0, 0.85, 0.55)}),
                   ("a small green circle above a large magenta square",
                    {"a small green circle": box(0, 0.3, 0.4, 0.7),
                     "a large magenta square": box(0.45, 0.2, 1, 0.8)})]


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
          away from the rest of the image, 0 being eDiff-I's inside-only rule; guidance runs only
          where a mask is painted (`unpainted_guidance`, default 1, elsewhere). Each phrase is
          painted as the caption spells it, article included. On the full quickstart run,
          `w = 0.5` puts 0.91 of single objects and 0.87 of pairs in their boxes against 0.24
          and 0.47 unpainted (`python -m vqd_jax.evaluate paint` measures it).
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
