"""One driver per run directory: `RunLock` holds an exclusive lock on `<run dir>/.lock` while a run trains.

A second `tokenalign train --resume` of a run that is still training (or whose driver is still shutting
down) would start a second set of servers over the same data and interleave two drivers' checkpoints;
it is refused instead. The kernel releases the lock when the holder exits, even by SIGKILL, so a killed
run resumes at once.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class RunLockedError(RuntimeError):
    """Another process trains this run."""


class RunLock:
    """`with RunLock(run_dir):` holds the run directory's lock, or raises RunLockedError naming the holder."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(f"{self.path.parent} is being trained by another process (pid {holder}); stop it "
                                 "(Ctrl-C checkpoints it) or wait for it to exit, then resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
