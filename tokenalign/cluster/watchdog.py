"""A watchdog that ends the driver's process group when the driver dies without stopping it, even by SIGKILL.

A local Ray started by the driver leaves processes in the driver's process group that outlive a killed
driver (Ray's dashboard and runtime-env agents were still running minutes later). The watchdog is a tiny
process in a session of its own holding the read end of a pipe from the driver: the kernel closes the
pipe whenever the driver exits, however it exits. A driver that finishes writes "done" first; otherwise
the watchdog sends SIGTERM to the driver's group, then SIGKILL to what is left after a grace period.
Embedded Redis servers need no watchdog: they die with their starter (cluster/redis_fleet.py).

    python -m tokenalign.cluster.watchdog PGID   # what the driver starts; reads the pipe on stdin
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

GRACE_S = 5.0
DONE = b"done"


class DriverWatchdog:
    """Arms a watchdog over this process's group; `disarm()` when the run ended in order."""

    def __init__(self) -> None:
        self.pgid = os.getpgid(0)
        self._process = subprocess.Popen([sys.executable, "-m", "tokenalign.cluster.watchdog", str(self.pgid)],
                                         stdin=subprocess.PIPE, start_new_session=True)

    @staticmethod
    def applies() -> bool:
        """Only a driver that leads its own process group (a command run from a shell) may have it ended: any
        other group holds processes that are not the run's (a test runner, a job's supervisor)."""
        return os.getpgid(0) == os.getpid()

    def disarm(self) -> None:
        """The run stopped everything it started: let the watchdog exit without killing anything."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.write(DONE)
            self._process.stdin.close()
        self._process.wait(timeout=30)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def main(pgid: int) -> None:
    if sys.stdin.buffer.read() == DONE:
        return
    for sig, wait_s in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.1)


if __name__ == "__main__":
    main(int(sys.argv[1]))
