"""Finding an exported model folder: the embedded default, a cache of auto-exports, or a user path.

Read top to bottom: :func:`resolve_model` turns a model name or path into an exported folder (built-once
artifacts and their cache rule: edgegen.artifacts), :func:`ensure_embeddings` adds input-embedding graphs to
a cached export, :func:`choose_backend` picks the faster backend for a device.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgegen.artifacts import DEFAULT_LUD, DEFAULT_MODEL_NAME, default_lud_model
from edgegen.cache import build_once, cache_dir, with_export_extras
from edgegen.errors import EdgegenError
from edgegen.manifest import BACKEND_CHOICE, Manifest, is_model_folder, read_manifest
from edgegen.profiles import DeviceProfile, load_profile
from edgegen.tokenizer import TextTokenizer

if TYPE_CHECKING:
    from edgegen.runtimes.base import Session


def export(source: str | Path | None, out: Path, **options: Any) -> Path:
    """Run the exporter (export extras needed)."""

    def run() -> Path:
        from edgegen.export import export_model

        return export_model(source, out, **options)

    return with_export_extras("exporting a model", run)


def _export(source: str | None, out: Path, profile: DeviceProfile, embeddings: bool = False) -> Path:
    return export(source, out, profile=profile.name, **({"embeddings": True} if embeddings else {}))


def _cached(source: str | None, out: Path, profile: DeviceProfile, embeddings: bool) -> Path:
    """The auto-export at ``out``: exported on first use, given input-embedding graphs when asked."""
    # export_model validates the source first, then shows its stages: the one-time cost is visible.
    build_once(out, f"{source or DEFAULT_MODEL_NAME} ({profile.name})",
               lambda: _export(source, out, profile, embeddings), progress=False)
    return ensure_embeddings(out) if embeddings else out


def ensure_embeddings(folder: Path, progress: bool = True) -> Path:
    """Return ``folder`` with input-embedding graphs (superposed decoding), adding them if it lacks them.

    Only auto-exports in the cache are changed (atomically, keeping their graphs; progress on stderr);
    any other export without them is a clear EdgegenError asking to re-export with --embeddings.
    """
    folder = Path(folder)
    if read_manifest(folder).has_embeddings():
        return folder
    if not folder.resolve().is_relative_to(cache_dir().resolve()):
        raise EdgegenError(f"{folder} has no input-embedding graphs: re-export it with `edgegen export --embeddings`")

    def build() -> Path:
        from edgegen.export.embeddings import add_embeddings

        return add_embeddings(folder, progress=progress)

    return build_once(folder, f"input-embedding graphs of the cached export {folder.name}", build, progress,
                      complete=lambda f: read_manifest(f).has_embeddings())


def resolve_model(model: str | Path | None, profile: DeviceProfile, embeddings: bool = False) -> Path:
    """Return an exported model folder for ``model``, exporting it into the cache on first use.

    ``model`` is None/"default" (the embedded SmolLM2), an exported folder (has edgegen.json), a
    Hugging Face model folder, or a .gguf file. ``embeddings``: the cached export must also have the
    input-embedding graphs (superposed decoding); they are added to an existing one if missing.
    A user's exported folder is returned as it is.
    """
    if str(model) == DEFAULT_LUD:  # the LUD-tuned default model, rebuilt from the shipped delta once
        return default_lud_model(profile.name)
    if model is None or str(model) == "default":
        out = cache_dir() / "models" / DEFAULT_MODEL_NAME / profile.name
        return _cached(None, out, profile, embeddings)
    path = Path(model).expanduser()
    if is_model_folder(path):
        return path
    if not path.exists():
        raise EdgegenError(f"model not found: {model}")
    if path.is_file() and path.suffix != ".gguf":
        raise EdgegenError(f"{model} is neither a model folder nor a .gguf file")
    if path.is_dir() and not (path / "config.json").is_file():
        raise EdgegenError(f"{model} is not a model folder (no edgegen.json or config.json)")
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    out = cache_dir() / "imported" / f"{path.stem}-{key}" / profile.name
    return _cached(str(path), out, profile, embeddings)


def _decode_speeds(factories: dict[str, Callable[[], Session]], rounds: int = 6, steps: int = 4) -> dict[str, float]:
    """Tokens/s of one-token greedy steps per backend: enough to rank them on this machine.

    The backends take turns (rounds of a few steps each) and each keeps its fastest step: another
    process's burst of work then slows both alike or neither, and cannot decide the choice alone.
    """
    sessions = {name: factory() for name, factory in factories.items()}
    ids = np.arange(100, 116, dtype=np.int64)
    token = np.array([ids[-1]])
    for session in sessions.values():
        session.forward(ids, last_only=True)
        session.forward(token)  # warm-up
    best = dict.fromkeys(sessions, float("inf"))
    for _ in range(rounds):
        for name, session in sessions.items():
            for _ in range(steps):
                start = time.perf_counter()
                session.forward(token)
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: 1.0 / seconds for name, seconds in best.items()}


def choose_backend(folder: Path, manifest: Manifest, device: str, open_session) -> str:
    """The faster backend for ``device`` among the exported graphs, measured once and remembered."""
    from edgegen.runtimes import BACKENDS, available_devices, graph_format

    present = available_devices()
    candidates = [name for name in BACKENDS
                  if graph_format(name) in manifest.graphs and device.upper() in present.get(name, [])]
    if not candidates:
        raise EdgegenError(f"no exported graph of {folder} runs on device '{device}' "
                           f"(devices present: {present})")
    if len(candidates) == 1:
        return candidates[0]
    record = folder / BACKEND_CHOICE
    choices = json.loads(record.read_text()) if record.is_file() else {}
    if device not in choices:
        speeds = _decode_speeds({name: (lambda n=name: open_session(n)) for name in candidates})
        choices[device] = {"backend": max(speeds, key=speeds.get), "tokens_per_s": speeds}
        try:
            record.write_text(json.dumps(choices, indent=2))
        except OSError:
            pass  # a read-only model folder: measure again next time
    return choices[device]["backend"]


def load_tokenizer(model: str | Path) -> TextTokenizer:
    """The tokenizer of an exported model folder, or of the default model ("default", exported to the
    cache with the cpu profile on first use)."""
    folder = resolve_model(None if str(model) == "default" else model, load_profile("cpu"))
    return TextTokenizer(folder, read_manifest(folder))
