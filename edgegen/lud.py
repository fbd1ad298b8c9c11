"""The LUD-tuned default model: rebuilt from the delta shipped in the package and exported once into the cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.manifest import is_model_folder, read_manifest
from edgegen.models import DEFAULT_MODEL_NAME, build_shipped, cache_dir, shipped_file

LUD_DEFAULT = "default-lud"  # the model name that selects it (load(model="default-lud"), --model default-lud)
SHIPPED_DELTA = "lud-smollm2-135m.safetensors"  # in edgegen/data


def shipped_delta_sha256() -> str | None:
    """sha256 of the LUD delta inside the package (None when this install lacks it)."""
    try:
        return hashlib.sha256(shipped_file(SHIPPED_DELTA).read_bytes()).hexdigest()
    except EdgegenError:
        return None


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

    def build() -> Path:
        from edgegen.export.lud import export_default_lud

        return export_default_lud(out, progress=progress)

    return build_shipped(out, "the LUD-tuned default model", build, progress, rebuild=is_model_folder(out))
