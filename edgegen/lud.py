"""The LUD-tuned default model: rebuilt from the delta shipped in the package and exported once into the cache."""

from __future__ import annotations

import hashlib
import sys
from importlib import resources
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.manifest import is_model_folder, read_manifest
from edgegen.models import DEFAULT_MODEL_NAME, cache_dir

LUD_DEFAULT = "default-lud"  # the model name that selects it (load(model="default-lud"), --model default-lud)
SHIPPED_DELTA = "lud-smollm2-135m.safetensors"  # in edgegen/data


def shipped_delta_sha256() -> str | None:
    """sha256 of the LUD delta inside the package (None when this install lacks it)."""
    path = Path(str(resources.files("edgegen").joinpath("data", SHIPPED_DELTA)))
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def is_current(folder: Path) -> bool:
    """An exported LUD-tuned default model built from the delta this package ships (the rebuild records the
    delta's sha256 in extras.lud; a folder built from another delta, or before the hash was recorded, is stale)."""
    if not is_model_folder(folder):
        return False
    try:
        recorded = read_manifest(folder).extras.get("lud", {}).get("delta_sha256")
    except (EdgegenError, OSError, ValueError):
        return False
    return recorded is not None and recorded == shipped_delta_sha256()


def default_lud_model(profile: str = "cpu", progress: bool = True) -> Path:
    """The exported LUD-tuned SmolLM2 folder: SmolLM2 + the shipped delta (placeholder rows, LoRA adapters merged
    by arithmetic), exported on first use and again whenever the shipped delta changes."""
    out = cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-lud" / profile
    if is_current(out):
        return out
    try:
        from edgegen.export.lud import export_default_lud
    except ImportError as e:
        raise EdgegenError(f"building the LUD-tuned default model needs the export extras ({e.name} is missing): "
                           "pip install 'edgegen[export]'") from None
    if progress:
        what = "rebuilding (its shipped delta changed)" if is_model_folder(out) else "building"
        print(f"[edgegen] {what} the LUD-tuned default model into {out} (once)", file=sys.stderr)
    return export_default_lud(out, progress=progress)
