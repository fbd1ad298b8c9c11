"""Peak memory of each bench engine, each measured alone.

Engines share the bench process while they take turns, so its RSS cannot say which engine holds what.
``peak_rss_mb`` re-opens one engine from its ``EngineSpec`` in a fresh (spawned) child process, runs one
generation and reports the child's peak resident set: VmHWM of /proc/self/status on Linux (ru_maxrss is
inherited across exec, so a child spawned by a big parent would report the parent's peak), ru_maxrss
elsewhere. Every figure includes the interpreter, NumPy and the engine's runtime libraries; the
differences between engines are theirs.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from edgegen.bench.engines import EngineSpec, open_engine


def _child_peak_rss_mb(spec: EngineSpec, prompt_ids: list[int], new_tokens: int) -> float:
    from edgegen.bench.runner import measure

    measure(open_engine(spec), prompt_ids, new_tokens)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def peak_rss_mb(spec: EngineSpec, prompt_ids: list[int], new_tokens: int) -> float:
    """Peak RSS in MiB of a fresh process that opens only ``spec``'s engine and generates ``new_tokens``."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_child_peak_rss_mb, spec, list(prompt_ids), new_tokens).result()


def peak_rss_by_engine(specs: Sequence[EngineSpec], prompt_ids: list[int], new_tokens: int,
                       note: Callable[[str], None] = print) -> dict[tuple[str, str], float]:
    """(engine label, weights) -> peak RSS MiB, one child process per engine (an engine that fails there is
    noted)."""
    found = {}
    for spec in specs:
        try:
            found[spec.label, spec.weights] = peak_rss_mb(spec, prompt_ids, new_tokens)
        except Exception as e:  # a failed measurement must not lose the bench's timings
            note(f"{spec.label}: peak RSS not measured ({type(e).__name__}: {e})".splitlines()[0])
    return found
