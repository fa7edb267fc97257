"""Draws the figures under docs/ from measured numbers (not part of the vqd_jax package).

  pip install matplotlib && python docs/plots.py

Every number below is a measurement recorded in docs/experiments.md; the comment beside each series
names the entry it comes from. Re-running the script rewrites the PNGs next to it.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))

# (minutes of denoiser training, shapes score) per checkpoint, 2 CPU cores.
SCORE_CURVES = [
    # 2026-12-02, current presets: one threaded XLA device, 1,500 layout warm-up steps, sampled
    # with truncation 0.7, 300 prompts per checkpoint (experiments.md, "2026-12-02: the presets as
    # they are").
    dict(label="quickstart (5,500 steps)", color="tab:blue", style="-o",
         points=[(5.3, 0.59), (6.9, 0.63), (8.6, 0.67), (9.5, 0.67)],
         steps=["3k", "4k", "5k", "5.5k"]),
    dict(label="--long (30,000 steps)", color="tab:red", style="-o",
         points=[(18.2, 0.897), (35.8, 0.903), (55.3, 0.897)], steps=["10k", "20k", "30k"]),
    # 2026-12-02, the same layout before the last changes: two XLA devices, 4,500 / 20,000 steps,
    # truncation 0.9, 300 prompts (experiments.md, "2026-12-02: 1,500 warm-up steps").
    dict(label="earlier quickstart (4,500 steps, truncation 0.9)", color="tab:blue", style="--s",
         alpha=0.45, points=[(4.8, 0.41), (7.3, 0.60), (9.9, 0.62), (11.2, 0.64)]),
    dict(label="earlier --long (20,000 steps, truncation 0.9)", color="tab:red", style="--s",
         alpha=0.45, points=[(10.1, 0.76), (20.1, 0.79), (29.2, 0.85), (38.7, 0.86),
                             (48.1, 0.88)]),
    # 2026-11-22, the longer preset's first layout: one position per token, fc MLP, batch 16,
    # no warm-up, 100 prompts (experiments.md, "2026-11-22: the longer preset's first layout").
    dict(label="first --long layout (2026-11-22, 100 prompts)", color="tab:gray", style=":^",
         alpha=0.8, points=[(12, 0.19), (24, 0.46), (37, 0.61), (49, 0.64), (61, 0.66)]),
]

# The quickstart layout (Mix-FFN x2, 2x2 patches, relative bias, 85% two-object captions), 4,500
# steps on one core each, 300 prompts: (name, [(seed, score, relation right)]). experiments.md,
# "2026-11-22: the layout warm-up" (its table, the 1,500-step row from 2026-12-02) and "2026-11-22:
# relative position bias, ..." (the 8-heads row).
WARMUP_SEEDS = [
    ("no warm-up", [(1, 0.32, 0.39), (2, 0.39, 0.43)]),
    ("no warm-up,\n8 heads of 16", [(1, 0.36, 0.38), (2, 0.38, 0.51)]),
    ("no warm-up,\npooled-text AdaLN", [(0, 0.38, 0.38), (1, 0.38, 0.40)]),
    ("no warm-up,\ncausal text encoder", [(0, 0.42, 0.39), (1, 0.36, 0.45)]),
    ("warm-up\n750 steps", [(1, 0.61, 0.94), (2, 0.52, 0.70)]),
    ("warm-up\n1,500 steps", [(1, 0.65, 0.97), (2, 0.62, 0.95)]),
]

# Truncation rate against score on the --long preset's prompts, 500 prompts each (experiments.md,
# "2026-12-02: the presets as they are", the small-circles table).
TRUNCATION = [
    dict(label="--long, 30,000 steps", color="tab:red",
         points=[(0.9, 0.884), (0.8, 0.908), (0.7, 0.920), (0.6, 0.926)]),
    dict(label="6 layers, 6,000 steps", color="tab:purple",
         points=[(0.9, 0.774), (0.7, 0.804), (0.5, 0.778)]),
]

# The quickstart run (5,000 steps): 150 pairs of one-object prompts, the first fraction f of the 50
# sampling steps on prompt A, the rest on B -> (f, follows A, follows B); and per t the share of
# each block's residual update that comes from cross-attention (experiments.md, "2026-12-05: when
# does the text decide the image?").
PROMPT_SWITCH = [(0.0, 0.0, 0.72), (0.1, 0.0, 0.747), (0.2, 0.0, 0.76), (0.3, 0.0, 0.713), (0.5, 0.0, 0.6), (0.7, 0.013, 0.307), (1.0, 0.7, 0.0)]
# The same on a base trained 5,000 steps on the longer preset's data (experiments.md, "2026-12-06:
# when does the text decide, on the longer data's base").
PROMPT_SWITCH_LONG_DATA = [(0.0, 0.0, 0.847), (0.1, 0.0, 0.813), (0.2, 0.0, 0.793), (0.3, 0.0, 0.76), (0.5, 0.0, 0.587), (0.7, 0.0, 0.467), (1.0, 0.833, 0.0)]
CROSS_ATTENTION_SHARE = {0: [0.138, 0.246, 0.379, 0.345], 10: [0.158, 0.262, 0.385, 0.344], 20: [0.173, 0.276, 0.384, 0.349], 30: [0.189, 0.285, 0.389, 0.353], 40: [0.208, 0.294, 0.392, 0.367], 50: [0.222, 0.307, 0.387, 0.375], 60: [0.24, 0.319, 0.388, 0.389], 70: [0.265, 0.335, 0.394, 0.411], 80: [0.284, 0.351, 0.393, 0.424], 90: [0.324, 0.368, 0.402, 0.408], 99: [0.332, 0.376, 0.389, 0.386]}

SEED_MARKERS = {0: "o", 1: "s", 2: "^"}


def score_vs_minutes(path: str) -> None:
  fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
  for c in SCORE_CURVES:
    xs, ys = zip(*c["points"])
    ax.plot(xs, ys, c["style"], color=c["color"], alpha=c.get("alpha", 1.0), label=c["label"],
            markersize=5, linewidth=2 if "alpha" not in c else 1.4)
    for x, y, steps in zip(xs, ys, c.get("steps", ())):
      ax.annotate(steps, (x, y), textcoords="offset points", xytext=(-4, 7), fontsize=7.5,
                  color=c["color"])
  ax.axhline(0.5, color="tab:blue", linewidth=0.8, alpha=0.3)
  ax.axhline(0.9, color="tab:red", linewidth=0.8, alpha=0.3)
  ax.set_xlabel("minutes of denoiser training (2 CPU cores)")
  ax.set_ylabel("shapes score (fraction of prompts fully right)")
  ax.set_title("Shapes score of the checkpoints against training time (labels: steps)")
  ax.set_xlim(0, 64)
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=8.5)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def warmup_seeds(path: str) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=110, sharey=True)
  names = [n for n, _ in WARMUP_SEEDS]
  for ax, col, title in ((axes[0], 1, "shapes score"), (axes[1], 2, "relation right (pairs)")):
    for i, (_, runs) in enumerate(WARMUP_SEEDS):
      color = "tab:green" if i >= 4 else "tab:gray"
      for j, (seed, *values) in enumerate(runs):
        x = i + (-0.1 if j == 0 else 0.1)  # side by side, so equal scores stay visible
        ax.plot(x, values[col - 1], SEED_MARKERS[seed], color=color, markersize=8, alpha=0.85)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=7.5, rotation=30, ha="right")
    ax.set_title(title)
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.grid(axis="y", alpha=0.3)
  handles = [plt.Line2D([], [], linestyle="", marker=m, color="black", label=f"seed {seed}")
             for seed, m in SEED_MARKERS.items()]
  axes[0].legend(handles=handles, loc="upper left", fontsize=8)
  fig.suptitle("Learning the direction of a relation: two seeds per setting "
               "(4,500 steps, 300 prompts)", fontsize=11)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def truncation(path: str) -> None:
  fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
  for c in TRUNCATION:
    xs, ys = zip(*c["points"])
    ax.plot(xs, ys, "-o", color=c["color"], label=c["label"])
  ax.set_xlabel("truncation rate r (keep the top-r probability mass)")
  ax.set_ylabel("shapes score (500 prompts; 1 s.e. about 0.02)")
  ax.set_title("Sampling with truncation, same checkpoints and prompts")
  ax.invert_xaxis()
  ax.grid(alpha=0.3)
  ax.legend(fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def prompt_switch(path: str) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
  f, follows_a, follows_b = zip(*PROMPT_SWITCH)
  axes[0].plot(f, follows_a, "-o", color="tab:blue",
               label="image follows A (the early prompt), quickstart run")
  axes[0].plot(f, follows_b, "-o", color="tab:orange",
               label="image follows B (the late prompt), quickstart run")
  f, follows_a, follows_b = zip(*PROMPT_SWITCH_LONG_DATA)
  axes[0].plot(f, follows_a, "--s", color="tab:blue", alpha=0.5, markersize=4,
               label="follows A, a base on the longer preset's data")
  axes[0].plot(f, follows_b, "--s", color="tab:orange", alpha=0.5, markersize=4,
               label="follows B, a base on the longer preset's data")
  axes[0].set_xlabel("fraction of the sampling steps conditioned on A (the first ones)")
  axes[0].set_ylabel("fraction of 150 images")
  axes[0].set_ylim(0, 1)
  axes[0].grid(alpha=0.3)
  axes[0].legend(fontsize=8.5)
  axes[0].set_title("Switching the prompt during sampling")
  ts = sorted(CROSS_ATTENTION_SHARE)
  for block in range(len(CROSS_ATTENTION_SHARE[ts[0]])):
    axes[1].plot(ts, [CROSS_ATTENTION_SHARE[t][block] for t in ts], "-o", markersize=4,
                 label=f"block {block}")
  axes[1].set_xlabel("timestep t (99 = all tokens masked)")
  axes[1].set_ylabel("cross-attention share of the residual update")
  axes[1].set_ylim(0, 0.5)
  axes[1].grid(alpha=0.3)
  axes[1].legend(fontsize=8.5)
  axes[1].set_title("How much each block listens to the text")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def main() -> None:
  score_vs_minutes(os.path.join(HERE, "score_vs_minutes.png"))
  warmup_seeds(os.path.join(HERE, "layout_warmup_seeds.png"))
  truncation(os.path.join(HERE, "truncation.png"))
  prompt_switch(os.path.join(HERE, "prompt_switch.png"))


if __name__ == "__main__":
  main()
