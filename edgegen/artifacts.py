"""Build-once artifacts: what edgegen builds into its cache on first use, and the one rule that keeps it current.

    artifact             inputs                                            built by
    default drafter      edgegen/data/drafter-smollm2-135m.safetensors     export.drafter.ship.export_drafter
    default-lud model    edgegen/data/lud-smollm2-135m.safetensors         export.lud.ship.export_lud
    default n-gram store the model's tokenizer.json + the stdlib corpus    ngram_build.build_store
    auto-exports         a model name or path (models.resolve_model)       export.pipeline.export_model

The rule: an artifact's cache path is keyed by the sha256 of its input files (and of its build rule), so
a changed input (a retrained drafter in a new edgegen, another tokenizer, another Python) names a new path,
and a path that exists is current. Artifacts are published atomically (a path that exists is complete) by
:func:`build_once`, under a lock next to the path: two processes wait for one build, and temp folders of a
killed build are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
import sysconfig
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.files import exclusive, remove_stale_temps
from edgegen.integrity import sha256_file
from edgegen.manifest import is_model_folder, read_manifest

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "EDGEGEN_CACHE"
DEFAULT_DRAFT = "default"  # load(draft="default"), --draft default: the shipped drafter of the default model
DEFAULT_LUD = "default-lud"  # load(model="default-lud"), --model default-lud: the LUD-tuned default model
SHIPPED_DRAFTER = "drafter-smollm2-135m.safetensors"  # in edgegen/data
SHIPPED_LUD_DELTA = "lud-smollm2-135m.safetensors"
SHIPPED_HEADS = "hydra-smollm2-135m.safetensors"  # Hydra heads of the default model (run in NumPy: edgegen.heads)


def cache_dir() -> Path:
    """Where auto-exports and built artifacts live ($EDGEGEN_CACHE, else ~/.cache/edgegen)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgegen")


def shipped_file(name: str) -> Path:
    """A file that ships inside the package (edgegen/data): the default model's drafter or LUD delta."""
    path = Path(str(resources.files(__package__).joinpath("data", name)))
    if not path.is_file():
        raise EdgegenError(f"this edgegen install lacks {name} (edgegen/data)")
    return path


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


# --- shipped models -----------------------------------------------------------------------------------------


def default_drafter_model(profile: str = "cpu", progress: bool = True) -> Path:
    """The exported drafter of the default model, built from the shipped pack on first use."""
    pack = shipped_file(SHIPPED_DRAFTER)
    out = cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-drafter-{input_key([pack])}" / profile

    def build() -> Path:
        from edgegen.export.drafter.ship import export_drafter
        from edgegen.profiles import load_profile

        # a torch profile's drafter is torch weights like its target; every other profile runs the int8 graphs
        prof = load_profile(profile)
        torch_weights = {"formats": ("torch",), "weights": prof.weights} if "torch" in prof.formats else {}
        return export_drafter(pack, out, target="default", progress=progress, **torch_weights)

    return build_once(out, "the default model's drafter", build, progress)


def default_heads_file() -> Path:
    """The default model's Hydra heads (strategy "hydra"): read from the package as they are, nothing to build."""
    return shipped_file(SHIPPED_HEADS)


def default_lud_model(profile: str = "cpu", progress: bool = True) -> Path:
    """The exported LUD-tuned SmolLM2 folder: SmolLM2 + the shipped delta (placeholder rows, LoRA adapters merged
    by arithmetic), exported on first use."""
    delta = shipped_file(SHIPPED_LUD_DELTA)
    out = cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-lud-{input_key([delta])}" / profile

    def build() -> Path:
        from edgegen.export.lud.ship import export_default_lud

        return export_default_lud(delta, out, progress=progress)

    return build_once(out, "the LUD-tuned default model", build, progress)


# --- the default n-gram store -------------------------------------------------------------------------------

DEFAULT_STORE_MAX_TOKENS = 4_000_000  # the whole 3.11 stdlib is 2.7M tokens: a cap for bigger ones
DEFAULT_STORE_MIN_COUNT = 2
_CORPUS_RULE = "stdlib-v1"


def default_store_path(model_folder: str | Path) -> Path:
    """Where :func:`default_store` keeps the store for this model's tokenizer and this Python.

    Keyed by the tokenizer file's bytes (cheap: no tokenizer is loaded when the store exists) and by
    everything that defines the corpus and the build; the header still records the vocabulary hash."""
    from edgegen.ngram import DEFAULT_ORDERS, FORMAT_VERSION

    folder = Path(model_folder)
    manifest = read_manifest(folder)
    rule = [_CORPUS_RULE, FORMAT_VERSION, platform.python_version(), sysconfig.get_paths()["stdlib"],
            list(DEFAULT_ORDERS), DEFAULT_STORE_MIN_COUNT, DEFAULT_STORE_MAX_TOKENS]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", manifest.name) or "model"
    return cache_dir() / "ngram" / f"{name}-{input_key([folder / manifest.tokenizer], rule)}.npz"


def default_store(model_folder: str | Path, progress: bool = True) -> Path:
    """A store for the model in ``model_folder`` that needs no user step: built on first use into the
    cache from the Python standard library (:func:`ngram_build.stdlib_corpus`; 2.7M tokens, 18.6 MB and
    12-30 s for SmolLM2 on 2 cores), then reused."""
    folder = Path(model_folder)
    path = default_store_path(folder)

    def build() -> Path:
        from edgegen.ngram import DEFAULT_ORDERS
        from edgegen.ngram_build import build_store, stdlib_corpus
        from edgegen.tokenizer import TextTokenizer

        tokenizer = TextTokenizer(folder, read_manifest(folder))
        items, description = stdlib_corpus()
        return build_store(items, tokenizer, out=path, orders=DEFAULT_ORDERS, min_count=DEFAULT_STORE_MIN_COUNT,
                           max_tokens=DEFAULT_STORE_MAX_TOKENS, progress=progress,
                           description=f"{description}; first {DEFAULT_STORE_MAX_TOKENS:,} tokens")

    return build_once(path, f"the default n-gram store for {folder.name}", build, progress,
                      complete=Path.is_file)
