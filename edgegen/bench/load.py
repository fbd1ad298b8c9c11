"""Background load for the bench: a busy loop pinned to one core, started and stopped by the bench itself.

Any laptop has background work; an engine whose thread pool spins or assumes every core is free can lose
badly when one core is taken. ``background_load("busy")`` runs a child Python process that spins on the
last usable core for the duration of a ``with`` block; it is stopped on leaving the block, also on an
error or Ctrl-C, and it exits by itself if the bench process dies without stopping it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from edgegen.errors import EdgegenError

LOADS = ("none", "busy")

# Spins on one core; every ~0.1 s checks that its parent is still there (orphaned: exits).
_BUSY = """
import os, sys, time
core, parent = int(sys.argv[1]), int(sys.argv[2])
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {core})
check = time.monotonic()
while True:
    for _ in range(100000):
        pass
    if time.monotonic() - check > 0.1:
        if os.getppid() != parent:
            sys.exit(0)
        check = time.monotonic()
"""


def busy_core() -> int:
    """The core the busy loop takes: the last one this process may run on."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return cores[-1]


@contextmanager
def background_load(kind: str) -> Iterator[None]:
    """Run the ``with`` block under ``kind``: "none" (as the machine is) or "busy" (one core spinning)."""
    if kind not in LOADS:
        raise EdgegenError(f"unknown background load '{kind}' (known: {', '.join(LOADS)})")
    if kind == "none":
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", _BUSY, str(busy_core()), str(os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
