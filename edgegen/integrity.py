"""Integrity of an exported model folder: every path stays inside it, every file has the size and sha256
recorded at export time.

A model folder may come from anywhere (a download, a shared drive), so its manifest is untrusted input: a
path that is absolute, climbs with ``..`` or reaches outside through a symlink is refused, never opened.
The export records ``{"size", "sha256"}`` of each file; loading compares sizes (a stat per file, cheap) and
``edgegen verify`` compares hashes (reads every byte). Standard library only: manifest.py builds on it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from edgegen.errors import EdgegenError

_CHUNK = 1 << 20


def inside(folder: Path, rel: Any, what: str) -> Path:
    """``folder / rel`` when ``rel`` is a relative path that stays inside ``folder`` (symlinks resolved);
    otherwise one EdgegenError naming ``what`` (e.g. "chat_template")."""
    if not isinstance(rel, str) or not rel.strip() or "\0" in rel:
        raise EdgegenError(f"the manifest of {folder} has an invalid {what} path: {rel!r}")
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or ".." in parts or (parts and parts[0].endswith(":")):
        raise EdgegenError(f"the manifest of {folder} names a {what} outside the model folder: {rel!r}")
    path = Path(folder) / rel
    if not path.resolve().is_relative_to(Path(folder).resolve()):
        raise EdgegenError(f"the manifest of {folder} names a {what} that links outside the model folder: {rel!r}")
    return path


def check_links(folder: Path) -> None:
    """Refuse a folder holding a symlink that leads outside it: a runtime opens files the manifest does not
    name (ONNX external data, OpenVINO .bin next to .xml), so naming no such path is not enough."""
    root = Path(folder).resolve()
    for path in Path(folder).rglob("*"):
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise EdgegenError(f"model folder {folder} has a link leading outside it: "
                               f"{path.relative_to(folder).as_posix()}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def record_files(folder: Path, skip: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every regular file under ``folder`` except hidden ones
    (work and lock files) and the top-level names in ``skip``."""
    folder = Path(folder)
    skip = set(skip)
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() in skip:
            continue
        if path.is_file() and not path.is_symlink():
            records[rel.as_posix()] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return records


def check_sizes(folder: Path, records: dict[str, dict[str, Any]]) -> None:
    """Compare each recorded file's size with the file on disk: one EdgegenError at the first difference."""
    for rel, rec in records.items():
        path = inside(folder, rel, "file")
        try:
            size = path.stat().st_size
        except OSError:
            raise EdgegenError(f"model folder {folder} is incomplete: {rel} is missing") from None
        if size != rec["size"]:
            raise EdgegenError(f"model folder {folder} is damaged: {rel} has {size} bytes, its export wrote "
                               f"{rec['size']}; re-export it (`edgegen verify {folder}` checks every file)")


def verify_files(folder: Path, records: dict[str, dict[str, Any]]) -> list[str]:
    """One line per recorded file whose bytes differ from the export (missing, other size, other sha256)."""
    problems = []
    for rel, rec in sorted(records.items()):
        path = inside(folder, rel, "file")
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != rec["size"]:
            problems.append(f"{rel}: {path.stat().st_size} bytes, the export wrote {rec['size']}")
        elif sha256_file(path) != rec["sha256"]:
            problems.append(f"{rel}: sha256 differs from the export's (the file was changed or corrupted)")
    return problems
