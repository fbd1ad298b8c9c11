"""The LUD-tuned default model: rebuilt from the delta shipped in the package and exported once into the cache."""

from __future__ import annotations

import sys
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.manifest import is_model_folder
from edgegen.models import DEFAULT_MODEL_NAME, cache_dir

LUD_DEFAULT = "default-lud"  # the model name that selects it (load(model="default-lud"), --model default-lud)


def default_lud_model(profile: str = "cpu", progress: bool = True) -> Path:
    """The exported LUD-tuned SmolLM2 folder: SmolLM2 + the shipped placeholder rows, exported on first use."""
    out = cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-lud" / profile
    if is_model_folder(out):
        return out
    try:
        from edgegen.export.lud import export_default_lud
    except ImportError as e:
        raise EdgegenError(f"building the LUD-tuned default model needs the export extras ({e.name} is missing): "
                           "pip install 'edgegen[export]'") from None
    if progress:
        print(f"[edgegen] building the LUD-tuned default model into {out} (once)", file=sys.stderr)
    return export_default_lud(out, progress=progress)
