"""The default model's drafter: rebuilt from the pack shipped in the package and exported once into the cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgegen.manifest import is_model_folder
from edgegen.models import DEFAULT_MODEL_NAME, build_shipped, cache_dir, shipped_file

DEFAULT_DRAFT = "default"  # load(draft="default"), --draft default: the shipped drafter of the default model
SHIPPED_NAME = "drafter-smollm2-135m.safetensors"


def default_drafter_model(profile: str = "cpu", progress: bool = True) -> Path:
    """The exported drafter of the default model, built from the shipped pack on first use.

    The cache folder is named after the pack's hash, so a new edgegen with a retrained drafter rebuilds it."""
    pack = shipped_file(SHIPPED_NAME)
    digest = hashlib.sha256(pack.read_bytes()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-drafter-{digest}" / profile
    if is_model_folder(out):
        return out

    def build() -> Path:
        from edgegen.export.drafter.ship import export_drafter

        return export_drafter(pack, out, target="default", progress=progress)

    return build_shipped(out, "the default model's drafter", build, progress)
