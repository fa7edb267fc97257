"""``python -m vqd_jax.bench chaos``: kill a training run at random moments, restart it, compare.

  python -m vqd_jax.bench chaos --config configs/diffusion.py:tiny --kills 50 --workdir /tmp/chaos

Trains the config once without interruption (WORKDIR/reference), then again in WORKDIR/chaos:
each attempt starts ``python -m vqd_jax.train`` and sends it SIGKILL after a random delay, until
``--kills`` kills were sent; a last attempt runs to the end. Then the two runs must agree: every
array of the final train state (parameters, optimizer, EMA; by the per-array checksums saved
with it), every logged loss, and ``metrics.jsonl`` and TensorBoard with each step exactly once.

Every process uses JAX's persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``, by default
WORKDIR/compilation_cache), as restarts should. Delays are drawn so that kills land while the process starts (imports, compilation, restore),
while it trains between checkpoints and while it writes one; where each kill landed is read from
the workdir at that moment and reported. Exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

from vqd_jax import checkpoint_health as health


@dataclasses.dataclass
class Attempt:
  delay: float        # seconds after the start the kill was due (inf: none)
  landed: str         # "starting", "training", "saving", or "finished" (not killed)
  steps_before: int   # the latest complete checkpoint step when it started
  children: int = 0   # processes the trainer had started when killed (data workers)
  orphans: int = 0    # of those, still alive 10 s after the kill


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqd_jax.bench chaos", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/diffusion.py:tiny",
                 help="Config to train (a tiny one: every attempt is a new process).")
  p.add_argument("--workdir", required=True,
                 help="Folder for the reference/ and chaos/ runs (emptied first).")
  p.add_argument("--kills", type=int, default=50, help="SIGKILLs to send (default 50).")
  p.add_argument("--steps", type=int, default=40,
                 help="Training steps of both runs (default 40, a checkpoint every 2).")
  p.add_argument("--seed", type=int, default=0, help="Seed of the kill delays.")
  p.add_argument("overrides", nargs="*", metavar="--config.FIELD=VALUE",
                 help="Further config overrides for both runs, as in python -m vqd_jax.train "
                      "(e.g. --config.vqvae_workdir=DIR for a token model).")
  return p


def _train_command(args, workdir: str) -> list[str]:
  return [sys.executable, "-m", "vqd_jax.train", "--config", args.config, "--workdir", workdir,
          f"--config.train.num_steps={args.steps}", "--config.train.ckpt_every=2",
          "--config.train.log_every=1", "--config.train.sample_every=0",
          "--config.train.keep_checkpoints=3", "--config.train.async_checkpoints=True",
          *args.overrides]


def _records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _latest_step(workdir: str) -> int:
  complete = health.scan(os.path.join(workdir, "checkpoints")).complete
  return complete[-1] if complete else 0


def _saving(workdir: str) -> bool:
  """Whether a checkpoint is being written (a step folder without its commit marks, or orbax's
  temporary folder)."""
  found = health.scan(os.path.join(workdir, "checkpoints"))
  return bool(found.incomplete or found.temporary)


def _max_step(workdir: str) -> int:
  return max((r["step"] for r in _records(workdir)), default=0)


@dataclasses.dataclass
class Outcome:
  code: int | None       # exit code; None when killed
  landed: str            # "starting", "training", "saving" or "finished"
  seconds: float
  first_row: float | None  # seconds until this attempt logged its first step
  children: int = 0
  orphans: int = 0


def _run(command: list[str], log_path: str, delay: float | None) -> Outcome:
  """Runs ``command`` to the end (``delay`` None) or SIGKILLs it after ``delay`` seconds."""
  workdir = command[command.index("--workdir") + 1]
  resumed_from = _latest_step(workdir)
  # JAX's persistent compilation cache, filled by the reference run: a restart then takes
  # seconds instead of a minute of compiling, as it would for users who set it.
  env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  env.setdefault("JAX_COMPILATION_CACHE_DIR",
                 os.path.join(os.path.dirname(workdir), "compilation_cache"))
  with open(log_path, "ab") as log:
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    first_row = None
    while process.poll() is None:
      now = time.perf_counter() - start
      if first_row is None and _max_step(workdir) > resumed_from:
        first_row = now
      if delay is not None and now >= delay:
        # A run logs no step past its checkpoint before it trains (a restart truncates them).
        landed = ("saving" if _saving(workdir) else
                  "training" if _max_step(workdir) > resumed_from else "starting")
        children = descendants(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait()
        return Outcome(None, landed, now, first_row, len(children), _reap_orphans(children))
      time.sleep(0.02)
    return Outcome(process.returncode, "finished", time.perf_counter() - start, first_row)


def descendants(pid: int) -> set[int]:
  """Every live process below ``pid``, from the parent links in /proc (empty elsewhere)."""
  parents = {}
  for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
          parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        continue
  found, frontier = set(), {pid}
  while frontier:
    frontier = {p for p, parent in parents.items() if parent in frontier} - found
    found |= frontier
  return found


def running(pid: int) -> bool:
  """Alive and not a zombie waiting to be reaped (Linux /proc)."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def _reap_orphans(children: set[int], wait: float = 10.0) -> int:
  """How many of a killed trainer's processes outlive it by ``wait`` seconds; those are killed."""
  deadline = time.perf_counter() + wait
  while time.perf_counter() < deadline and any(map(running, children)):
    time.sleep(0.1)
  orphans = [p for p in children if running(p)]
  for p in orphans:
    os.kill(p, signal.SIGKILL)
  return len(orphans)


def _compare(reference: str, chaos: str) -> list[str]:
  """What differs between the finished runs (empty: nothing)."""
  from vqd_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from vqd_jax.training import metrics  # pylint: disable=import-outside-toplevel
  problems = []
  step = _latest_step(reference)
  if _latest_step(chaos) != step:
    return [f"the chaos run ended at step {_latest_step(chaos)}, the reference at {step}"]
  sums = [ckpt_lib.Checkpointer(w, read_only=True).saved_checksums(step) for w in (reference, chaos)]
  differ = sorted(k for k in sums[0] if sums[0][k] != sums[1].get(k))
  if not sums[0] or differ:
    problems.append(f"final state differs in {len(differ)} of {len(sums[0])} arrays: {differ[:4]}")
  rows = [[r for r in _records(w) if "loss" in r] for w in (reference, chaos)]
  steps = [[r["step"] for r in rs] for rs in rows]
  if steps[1] != sorted(set(steps[1])) or steps[0] != steps[1]:
    problems.append(f"metrics.jsonl steps differ: reference {steps[0][:8]}..., chaos "
                    f"{steps[1][:8]}... ({len(steps[1])} rows, {len(set(steps[1]))} distinct)")
  else:
    gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(*rows))
    if gap > 1e-5 * max(1.0, max(abs(a["loss"]) for a in rows[0])):
      problems.append(f"logged losses differ by up to {gap:.3g}")
  shown = [metrics.tensorboard_scalars(w, "loss") for w in (reference, chaos)]
  twice = sorted(s for s, v in shown[1].items() if len(v) > 1)
  if twice or sorted(shown[1]) != sorted(shown[0]):
    problems.append(f"TensorBoard shows steps {twice[:5]} twice or misses steps "
                    f"{sorted(set(shown[0]) - set(shown[1]))[:5]}")
  return problems


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  args.overrides = list(args.overrides) + extra
  bad = [o for o in args.overrides if not o.startswith("--config.")]
  if bad or args.kills < 0 or args.steps < 2:
    parser.error(f"unexpected arguments {bad}" if bad else "--kills >= 0 and --steps >= 2")
  shutil.rmtree(args.workdir, ignore_errors=True)
  reference, chaos = (os.path.join(args.workdir, n) for n in ("reference", "chaos"))
  os.makedirs(args.workdir)
  ref = _run(_train_command(args, reference), reference + ".log", None)
  if ref.code == 0:  # once more, now with a warm compilation cache, for the delays
    shutil.rmtree(reference)
    ref = _run(_train_command(args, reference), reference + ".log", None)
  if ref.code != 0:
    raise SystemExit(f"The reference run failed (exit {ref.code}); see {reference}.log.")
  total = ref.seconds
  startup = ref.first_row or total / 2
  rng = np.random.default_rng(args.seed)
  attempts: list[Attempt] = []
  # A third of the kills during start-up, the rest in a share of training small enough for
  # --kills kills to fit in the run: a restart resumes from its last checkpoint, so later kills
  # land in later steps.
  span = min(1.5 / max(args.kills, 1), 0.8) * (total - startup)
  restarts = 0
  while len([a for a in attempts if a.landed != "finished"]) < args.kills:
    if rng.random() < 1 / 3:
      delay = float(rng.uniform(0.3 * startup, startup))
    else:
      delay = float(startup + rng.uniform(0, span))
    before = _latest_step(chaos)
    out = _run(_train_command(args, chaos), chaos + ".log", delay)
    attempts.append(Attempt(delay, out.landed, before, out.children, out.orphans))
    if out.landed == "finished":
      if out.code != 0:
        raise SystemExit(f"A chaos attempt failed on its own (exit {out.code}); see {chaos}.log.")
      if len(attempts) > 1 or restarts >= 5:
        break
      # Finished before its first kill: start the chaos run again with shorter delays.
      shutil.rmtree(chaos)
      attempts, span, restarts = [], span / 2, restarts + 1
      continue
    print(f"kill {len(attempts)}: after {delay:.1f} s, while {out.landed} (from step {before})",
          flush=True)
  if not attempts or attempts[-1].landed != "finished":
    out = _run(_train_command(args, chaos), chaos + ".log", None)
    if out.code != 0:
      raise SystemExit(f"The last chaos attempt failed (exit {out.code}); see {chaos}.log.")
  kills = [a for a in attempts if a.landed != "finished"]
  problems = _compare(reference, chaos)
  landed = {k: sum(a.landed == k for a in kills) for k in ("starting", "training", "saving")}
  print(f"config {args.config}, {args.steps} steps; reference run {total:.1f} s "
        f"({startup:.1f} s to its first step)")
  print("kills landed while " + ", ".join(f"{k} {v}" for k, v in landed.items()))
  with_workers = sum(a.children > 0 for a in kills)
  if with_workers:
    print(f"kills while the trainer's data workers ran: {with_workers}")
  orphans = sum(a.orphans for a in kills)
  if orphans:
    problems.append(f"{orphans} worker processes outlived their killed trainer by 10 s")
  for p in problems:
    print(f"DIFFERENCE: {p}")
  survived = len(kills) if not problems else 0
  if len(kills) < args.kills:
    print(f"the run finished after {len(kills)} of the {args.kills} kills asked for")
  print(f"kills survived: {survived} of {len(kills)} sent; final state, losses, metrics.jsonl "
        f"and TensorBoard {'identical' if not problems else 'DIFFER'}")
  return 0 if not problems else 1
