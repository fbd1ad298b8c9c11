"""The default model's drafter: rebuilt from the pack shipped in the package and exported once into the cache."""

from __future__ import annotations

import hashlib
import sys
from importlib import resources
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.manifest import is_model_folder
from edgegen.models import DEFAULT_MODEL_NAME, cache_dir

DEFAULT_DRAFT = "default"  # load(draft="default"), --draft default: the shipped drafter of the default model
SHIPPED_NAME = "drafter-smollm2-135m.safetensors"


def shipped_pack() -> Path:
    """The packed drafter inside the package (edgegen/data)."""
    path = Path(str(resources.files("edgegen").joinpath("data", SHIPPED_NAME)))
    if not path.is_file():
        raise EdgegenError(f"this edgegen install lacks the default model's drafter ({path})")
    return path


def default_drafter_model(profile: str = "cpu", progress: bool = True) -> Path:
    """The exported drafter of the default model, built from the shipped pack on first use.

    The cache folder is named after the pack's hash, so a new edgegen with a retrained drafter rebuilds it."""
    digest = hashlib.sha256(shipped_pack().read_bytes()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-drafter-{digest}" / profile
    if is_model_folder(out):
        return out
    try:
        from edgegen.export.drafter.ship import export_drafter
    except ImportError as e:
        raise EdgegenError(f"building the default model's drafter needs the export extras ({e.name} is missing): "
                           "pip install 'edgegen[export]'") from None
    if progress:
        print(f"[edgegen] building the default model's drafter into {out} (once)", file=sys.stderr)
    return export_drafter(shipped_pack(), out, target="default", progress=progress)
