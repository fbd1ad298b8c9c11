"""The build-once cache: where built artifacts live, how their paths are keyed, and how one gets built.

The rule: an artifact's cache path is keyed by the sha256 of its input files (and of its build rule), so
a changed input (a retrained drafter in a new edgegen, another tokenizer, another Python) names a new path,
and a path that exists is current. Artifacts are published atomically (a path that exists is complete) by
:func:`build_once`, under a lock next to the path: two processes wait for one build, and temp folders of a
killed build are removed. What is built this way: edgegen.artifacts (shipped models, the n-gram store),
models (auto-exports), the training recipes' teacher exports.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.files import exclusive, remove_stale_temps
from edgegen.integrity import sha256_file
from edgegen.manifest import is_model_folder

CACHE_ENV = "EDGEGEN_CACHE"


def cache_dir() -> Path:
    """Where auto-exports and built artifacts live ($EDGEGEN_CACHE, else ~/.cache/edgegen)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgegen")


def input_key(inputs: Sequence[Path], rule: Any = None) -> str:
    """The part of an artifact's cache path that names its inputs: the sha256 (12 hex digits) of each input
    file, then of the JSON build rule."""
    parts = [sha256_file(p)[:12] for p in inputs]
    if rule is not None:
        parts.append(hashlib.sha256(json.dumps(rule, sort_keys=True).encode()).hexdigest()[:10])
    return "-".join(parts)


def with_export_extras(what: str, build: Callable[[], Path]) -> Path:
    """Run an export step, turning a missing export dependency into one clear line."""
    try:
        return build()
    except ImportError as e:
        raise EdgegenError(f"{what} needs the export extras ({e.name} is missing): "
                           "pip install 'edgegen[export]'") from None


def build_once(out: Path, what: str, build: Callable[[], Path], progress: bool = True,
               complete: Callable[[Path], bool] = is_model_folder) -> Path:
    """``out`` when it is complete, else build it (one process at a time; the others wait and reuse it).
    Either way, temp folders that killed builds of ``out`` left are removed (a directory listing: cheap)."""
    remove_stale_temps(out)
    if complete(out):
        return out
    with exclusive(out):
        if complete(out):  # built by the process we waited for
            return out
        if progress:
            print(f"[edgegen] building {what} into {out} (once)", file=sys.stderr)
        return with_export_extras(f"building {what}", build)
