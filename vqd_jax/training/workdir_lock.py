"""One training process per run directory: ``workdir/train.lock``.

Two trainers writing the same workdir interleave checkpoints and metrics and corrupt both runs, a
mistake that is easy to make with preemptible jobs restarted by a scheduler while the old job still
runs. The lock file names its holder (pid, host, start time); the holder keeps it ``flock``-ed for
its lifetime, so the kernel releases it when the process dies however it dies.

* A lock held by a live process refuses with :class:`WorkdirLockError` (workdir, pid, host, fix).
* A stale lock, left on this host by a process that no longer runs (killed, crashed, preempted), is
  taken over with a warning.
* A lock left by another host cannot be checked from here: it refuses, and says how to remove it.
* Only process 0 of a multi-host job takes the lock (:func:`hold`); the others learn its outcome.
* ``gs://`` (any ``scheme://``) workdirs are not locked: object stores have no atomic create or
  file locks, so one writer per bucket folder is left to the job scheduler.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from typing import Iterator

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"


class WorkdirLockError(RuntimeError):
  """Another training process holds the workdir (or held it from another host)."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by another user
    return True
  return True


def _read_holder(fd: int) -> dict | None:
  """The JSON the lock file holds, or None when empty or unreadable (a crash mid-write)."""
  os.lseek(fd, 0, os.SEEK_SET)
  raw = b""
  while chunk := os.read(fd, 4096):
    raw += chunk
  try:
    holder = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError):
    return None
  return holder if isinstance(holder, dict) and "pid" in holder else None


class WorkdirLock:
  """An exclusive, self-describing lock on ``workdir`` (see the module docstring)."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self._fd: int | None = None

  def _describe(self, holder: dict) -> str:
    since = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "unknown time"
    return f"pid {holder.get('pid')} on host {holder.get('host')!r} (since {when})"

  def _refuse(self, holder: dict, other_host: bool) -> WorkdirLockError:
    if other_host:
      fix = (f"If that run no longer runs (its machine was shut down or preempted), delete "
             f"{self.path} and re-run; to train a second run, use another --workdir.")
    else:
      fix = ("Wait for it to finish or stop it first (re-running the same command then resumes "
             "from its last checkpoint); to train a second run, use another --workdir.")
    return WorkdirLockError(f"The run directory {self.workdir} is in use by another training "
                            f"process: {self._describe(holder)}. {fix}")

  def _try_flock(self, fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this filesystem has no flock."""
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        return False
      return None

  def _open_locked(self) -> tuple[int, bool | None]:
    """Opens the lock file and flocks it; retries if a releasing holder unlinked it meanwhile."""
    for _ in range(10):
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      locked = self._try_flock(fd)
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same or locked is False:
        return fd, locked
      os.close(fd)  # locked a file that was unlinked since: lock the new one
    raise WorkdirLockError(f"Could not lock {self.path}: it keeps being replaced by another "
                           "process. Make sure a single training command uses this --workdir.")

  def acquire(self) -> None:
    """Takes the lock or raises :class:`WorkdirLockError` (see the module docstring)."""
    os.makedirs(self.workdir, exist_ok=True)
    fd, locked = self._open_locked()
    holder = _read_holder(fd)
    host = socket.gethostname()
    try:
      if holder is not None or locked is False:
        self._check_holder(holder, locked, host)
    except WorkdirLockError:
      os.close(fd)
      raise
    me = {"pid": os.getpid(), "host": host, "started": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
    os.fsync(fd)
    self._fd = fd

  def _check_holder(self, holder: dict | None, locked: bool | None, host: str) -> None:
    """Raises unless ``holder`` (of a lock we could or could not flock) is known to be gone."""
    holder = holder or {"pid": "unknown", "host": "unknown"}
    other_host = holder.get("host") != host
    if locked is False:  # a live process holds the flock, on this host or on a shared filesystem
      raise self._refuse(holder, other_host)
    if other_host:
      raise self._refuse(holder, True)
    pid = holder.get("pid")
    if locked is None and isinstance(pid, int) and _pid_alive(pid):
      raise self._refuse(holder, False)
    log.warning("Taking over the stale lock %s of %s: that process no longer runs (it was "
                "killed or crashed); resuming its run.", self.path, self._describe(holder))

  def release(self) -> None:
    """Removes the lock file, then drops the flock (in that order: see ``_open_locked``)."""
    if self._fd is None:
      return
    with contextlib.suppress(FileNotFoundError):
      os.unlink(self.path)
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _agree_across_processes(error: str) -> None:
  """Every process raises if process 0 could not lock (``error`` is its message, '' if it could)."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  failed = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
  if int(failed) and not error:
    raise WorkdirLockError("Process 0 could not lock the run directory (its log says why).")


@contextlib.contextmanager
def hold(workdir: str, process_index: int = 0) -> Iterator[None]:
  """Holds the lock of ``workdir`` while the body runs: process 0 only, local workdirs only."""
  if "://" in workdir:
    log.info("Not locking %s: object-store workdirs have no file locks.", workdir)
    yield
    return
  lock = WorkdirLock(workdir) if process_index == 0 else None
  error = ""
  if lock is not None:
    try:
      lock.acquire()
    except WorkdirLockError as e:
      error = str(e)
  _agree_across_processes(error)
  if error:
    raise WorkdirLockError(error)
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
