"""Runs one command as several simulated hosts: local processes started together (the fake
``gcloud`` and ``srun`` next to this file use it)."""

import os
import subprocess
import sys
import tempfile
import time


def run_on_hosts(command: list[str], envs: list[dict[str, str]], cwds: list[str]) -> int:
  """Runs ``command`` once per ``envs``/``cwds`` entry, all at once; returns the worst exit code.

  When one process fails the others are stopped (a real cluster would wait for the coordinator's
  time-outs). Their outputs are printed afterwards, process by process.
  """
  logs = [tempfile.TemporaryFile() for _ in envs]
  procs = [subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT) for env, cwd, log in zip(envs, cwds, logs)]
  while any(p.poll() is None for p in procs):
    if any(p.returncode for p in procs):
      for p in procs:
        if p.poll() is None:
          p.terminate()
    time.sleep(0.2)
  for i, log in enumerate(logs):
    log.seek(0)
    sys.stdout.write(f"--- host {i} (exit {procs[i].returncode}) ---\n")
    sys.stdout.write(log.read().decode(errors="replace"))
  sys.stdout.flush()
  return max((abs(p.returncode) for p in procs), default=0)


def log_call(path: str, argv: list[str]) -> None:
  """Appends one line, ``argv`` joined by spaces, to the calls log at ``path``."""
  with open(path, "a", encoding="utf-8") as f:
    f.write(" ".join(argv) + "\n")


def cpu_env(**extra) -> dict[str, str]:
  """This process's environment, on the CPU, plus ``extra``."""
  return dict(os.environ, JAX_PLATFORMS="cpu", **{k: str(v) for k, v in extra.items()})
