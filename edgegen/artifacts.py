"""Build-once artifacts: what edgegen builds into its cache on first use (the rule: edgegen.cache).

    artifact             inputs                                            built by
    default drafter      edgegen/data/drafter-smollm2-135m.safetensors     export.drafter.ship.export_drafter
    default-lud model    edgegen/data/lud-smollm2-135m.safetensors         export.lud.ship.export_lud
    default n-gram store the model's tokenizer.json + the stdlib corpus    ngram_build.build_store
    auto-exports         a model name or path (models.resolve_model)       export.pipeline.export_model
"""

from __future__ import annotations

import platform
import re
import sysconfig
from importlib import resources
from pathlib import Path

from edgegen.cache import build_once, cache_dir, input_key
from edgegen.errors import EdgegenError
from edgegen.manifest import read_manifest

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_DRAFT = "default"  # load(draft="default"), --draft default: the shipped drafter of the default model
DEFAULT_LUD = "default-lud"  # load(model="default-lud"), --model default-lud: the LUD-tuned default model
SHIPPED_DRAFTER = "drafter-smollm2-135m.safetensors"  # in edgegen/data
SHIPPED_LUD_DELTA = "lud-smollm2-135m.safetensors"
SHIPPED_HEADS = "hydra-smollm2-135m.safetensors"  # Hydra heads of the default model (run in NumPy: edgegen.heads)


def shipped_file(name: str) -> Path:
    """A file that ships inside the package (edgegen/data): the default model's drafter or LUD delta."""
    path = Path(str(resources.files(__package__).joinpath("data", name)))
    if not path.is_file():
        raise EdgegenError(f"this edgegen install lacks {name} (edgegen/data)")
    return path


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
