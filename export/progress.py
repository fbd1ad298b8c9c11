"""Stage lines, warnings, and the libraries' output of the export pipeline.

edgegen's own lines go to the terminal's stderr (:func:`console`) also while :func:`library_output` sends
what the builders print to the model folder's export.log: stdout stays clean (``edgegen run --json``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

_console: TextIO | None = None  # the terminal's stderr while library_output redirects file descriptor 2


def console() -> TextIO:
    """Where edgegen's own export lines go: the terminal's stderr, also while library output is redirected."""
    return _console or sys.__stderr__ or sys.stderr


def warn(message: str) -> None:
    """One warning line; shown even when progress is off (a flagged graph must not pass silently)."""
    print(f"edgegen export: warning: {message}", file=console(), flush=True)


class Stages:
    """Numbered stage lines with timings on stderr; the libraries' own progress bars show in between."""

    def __init__(self, enabled: bool, names: list[str]) -> None:
        self.enabled = enabled
        self.names = names
        self.times: dict[str, float] = {}
        self.start = time.perf_counter()

    def _print(self, line: str) -> None:
        if self.enabled:
            print(f"[edgegen export] {line}", file=console(), flush=True)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in self.names:  # a stage the plan could not foresee (a re-quantization): counted where it runs
            self.names.insert(len(self.times), name)
        i = self.names.index(name) + 1
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
def library_output(log: Path, verbose: bool = False) -> Iterator[None]:
    """Send what the libraries print while exporting to ``log`` (``verbose``: to stderr), never to stdout.

    Python-level prints, warnings, logging handlers and progress bars, and the native builders' and
    OpenVINO/NNCF's own writes to file descriptors 1 and 2 are all caught (the descriptors are redirected
    for the duration: process-wide, as native code writes to them directly). edgegen's stage lines and
    warnings still reach the terminal through :func:`console`.
    """
    global _console
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = os.dup(1), os.dup(2)
    except OSError:  # no standard descriptors (a daemon): redirect what Python prints
        with open(log, "a") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
        return
    console_stream = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    sink_fd = os.dup(saved[1]) if verbose else os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    sink = os.fdopen(sink_fd, "w", buffering=1)
    hf_logging = None
    if not verbose:  # a progress bar in a log file is a screen of carriage returns
        with contextlib.suppress(Exception):
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
    previous, _console = _console, console_stream
    os.dup2(sink.fileno(), 1)
    os.dup2(sink.fileno(), 2)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__, sink):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        _console = previous
        console_stream.close()
        sink.close()
        if hf_logging is not None:
            hf_logging.enable_progress_bar()
