"""Peak memory of a bench engine: the peak resident set of the process that runs only it.

Every bench engine runs in a spawned process of its own (bench/isolated.py), which reads this after its timed
generations: VmHWM of /proc/self/status on Linux (ru_maxrss is inherited across exec, so a child spawned by a big
parent would report the parent's peak), ru_maxrss elsewhere. Every figure includes the interpreter, NumPy and the
engine's runtime libraries; the differences between engines are theirs.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def process_peak_rss_mb() -> float:
    """This process's peak resident set in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
