"""Finding an exported model folder: the embedded default, a cache of auto-exports, or a user path."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.manifest import Manifest, is_model_folder
from edgegen.profiles import DeviceProfile

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "EDGEGEN_CACHE"
_BACKEND_CHOICE = "backend-choice.json"


def cache_dir() -> Path:
    """Where auto-exported models live ($EDGEGEN_CACHE, else ~/.cache/edgegen)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgegen")


def export(source: str | Path | None, out: Path, **options: Any) -> Path:
    """Run the exporter, turning a missing export dependency into one clear line."""
    try:
        from edgegen.export import export_model

        return export_model(source, out, **options)
    except ImportError as e:
        raise EdgegenError(f"exporting a model needs the export extras ({e.name} is missing): "
                           "pip install 'edgegen[export]'") from None


def _export(source: str | None, out: Path, profile: DeviceProfile) -> Path:
    # export_model validates the source first, then shows its stages: the one-time cost is visible.
    return export(source, out, profile=profile.name)


def resolve_model(model: str | Path | None, profile: DeviceProfile) -> Path:
    """Return an exported model folder for ``model``, exporting it into the cache on first use.

    ``model`` is None/"default" (the embedded SmolLM2), an exported folder (has edgegen.json), a
    Hugging Face model folder, or a .gguf file.
    """
    if model is None or str(model) == "default":
        out = cache_dir() / "models" / DEFAULT_MODEL_NAME / profile.name
        return out if is_model_folder(out) else _export(None, out, profile)
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
    return out if is_model_folder(out) else _export(str(path), out, profile)


def _decode_speed(session_factory) -> float:
    """Tokens/s of a short greedy decode: enough to rank two backends on this machine."""
    session = session_factory()
    ids = np.arange(100, 116, dtype=np.int64)
    session.forward(ids, last_only=True)
    token = np.array([ids[-1]])
    session.forward(token)  # warm-up
    start = time.perf_counter()
    for _ in range(16):
        session.forward(token)
    return 16 / (time.perf_counter() - start)


def choose_backend(folder: Path, manifest: Manifest, device: str, open_session) -> str:
    """The faster backend for ``device`` among the exported graphs, measured once and remembered."""
    from edgegen.runtimes import BACKENDS, available_devices

    present = available_devices()
    candidates = [name for name, (_, _, fmt) in BACKENDS.items()
                  if fmt in manifest.graphs and device.upper() in present.get(name, [])]
    if not candidates:
        raise EdgegenError(f"no exported graph of {folder} runs on device '{device}' "
                           f"(devices present: {present})")
    if len(candidates) == 1:
        return candidates[0]
    record = folder / _BACKEND_CHOICE
    choices = json.loads(record.read_text()) if record.is_file() else {}
    if device not in choices:
        speeds = {name: _decode_speed(lambda n=name: open_session(n)) for name in candidates}
        choices[device] = {"backend": max(speeds, key=speeds.get), "tokens_per_s": speeds}
        try:
            record.write_text(json.dumps(choices, indent=2))
        except OSError:
            pass  # a read-only model folder: measure again next time
    return choices[device]["backend"]
