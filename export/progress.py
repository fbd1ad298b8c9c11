"""Stage lines, warnings and silencing for the export pipeline.

Everything goes to the real stderr (sys.__stderr__) so that a quiet export, which redirects the
libraries' own prints, still shows its warnings.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def warn(message: str) -> None:
    """One warning line; shown even when progress is off (a flagged graph must not pass silently)."""
    print(f"edgegen export: warning: {message}", file=sys.__stderr__, flush=True)


class Stages:
    """Numbered stage lines with timings on stderr; the libraries' own progress bars show in between."""

    def __init__(self, enabled: bool, names: list[str]) -> None:
        self.enabled = enabled
        self.names = names
        self.times: dict[str, float] = {}
        self.start = time.perf_counter()

    def _print(self, line: str) -> None:
        if self.enabled:
            print(f"[edgegen export] {line}", file=sys.__stderr__, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        i = self.names.index(name) + 1 if name in self.names else len(self.times) + 1
        self._print(f"({i}/{len(self.names)}) {name} ...")
        t0 = time.perf_counter()
        yield
        self.times[name] = time.perf_counter() - t0
        self._print(f"({i}/{len(self.names)}) {name}: done in {self.times[name]:.1f} s")

    def note(self, line: str) -> None:
        self._print("    " + line)

    def summary(self, out_dir: Path) -> None:
        self._print(f"exported to {out_dir} in {time.perf_counter() - self.start:.1f} s")


@contextlib.contextmanager
def quiet(enabled: bool) -> Iterator[None]:
    """Silence the libraries' Python-level prints and progress bars (native logs may still show)."""
    if not enabled:
        yield
        return
    hf_logging = None
    with contextlib.suppress(Exception):  # transformers absent or changed: silence is best effort
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        if hf_logging is not None:
            hf_logging.enable_progress_bar()
