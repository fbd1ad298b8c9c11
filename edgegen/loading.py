"""``load()``: checks the request, finds (or exports) the model, opens its session and returns a Generator."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgegen import runtimes
from edgegen.arguments import check_bool, check_float, check_optional_int, check_optional_text, check_path
from edgegen.artifacts import DEFAULT_DRAFT, default_drafter_model
from edgegen.errors import EdgegenError
from edgegen.generator import Generator
from edgegen.manifest import Manifest, read_manifest
from edgegen.models import choose_backend, ensure_embeddings, resolve_model
from edgegen.profiles import load_profile
from edgegen.prompt_cache import PromptCache
from edgegen.strategies import ModelDrafter
from edgegen.tokenizer import TextTokenizer

# device -> profile used when none is named
DEVICE_PROFILES = {"CPU": "cpu", "GPU": "core-ultra-igpu", "NPU": "core-ultra-npu", "CUDA": "cuda-server",
                   "DML": "cpu"}
# backend -> device -> profile used when none is named, for a backend that runs its own export format
BACKEND_PROFILES = {"torch": {"CPU": "torch-cpu", "CUDA": "torch-cuda"}}


def load(model: str | Path | None = None, draft: str | Path | None = None, backend: str | None = None,
         device: str | None = None, profile: str | None = None, max_length: int | None = None,
         threads: int | None = None, draft_confidence: float = 0.0, embeddings: bool = False,
         draft_device: str | None = None, prompt_cache_mb: float = 256) -> Generator:
    """Load a model for generation.

    model: None for the embedded SmolLM2-135M-Instruct (exported on first use), an exported folder,
    a Hugging Face model folder or a .gguf file. backend: "onnxruntime", "openvino" or None to
    pick the faster for the device (measured once). device: "CPU" (default), "GPU", "NPU", "CUDA",
    "DML"; a device that is not present is refused before anything is exported. profile: a device
    profile name (default: the one for the device). draft: an exported draft model (same tokenizer
    and vocabulary) for strategy="speculative", or "default" for the drafter shipped with the
    default model (which strategy="speculative" also opens on first use when none is given);
    draft_confidence in [0, 1] stops a draft early when the drafter's top probability falls below
    it. embeddings: run the export's input-embedding graph (superposed decoding needs it; the
    default model gets it on first use). draft_device: where the draft model runs (default: the
    profile's draft_device, else ``device``; the NPU profile puts the target on the NPU, its drafter on the CPU).
    prompt_cache_mb: host memory for KV snapshots of earlier prompts, so alternating conversations each keep
    their prefix (edgegen/prompt_cache.py; 0 turns it off; off anyway where the session cannot copy its cache).
    Every argument is checked first: a bad one is an EdgegenError.
    """
    model, draft = check_path("model", model), check_path("draft", draft)
    backend, profile = check_optional_text("backend", backend), check_optional_text("profile", profile)
    max_length = check_optional_int("max_length", max_length, minimum=1)
    threads = check_optional_int("threads", threads, minimum=1)
    draft_confidence = check_float("draft_confidence", draft_confidence)
    if not 0 <= draft_confidence <= 1:
        raise EdgegenError(f"draft_confidence must be in [0, 1], got {draft_confidence}")
    embeddings = check_bool("embeddings", embeddings)
    draft_device = check_optional_text("draft_device", draft_device)
    prompt_cache_mb = check_float("prompt_cache_mb", prompt_cache_mb)
    if prompt_cache_mb < 0:
        raise EdgegenError(f"prompt_cache_mb must be >= 0, got {prompt_cache_mb}")
    device = (check_optional_text("device", device) or (load_profile(profile).device if profile else "CPU")).upper()
    if device not in DEVICE_PROFILES:
        raise EdgegenError(f"unknown device '{device}' (known: {', '.join(DEVICE_PROFILES)})")
    if backend is not None:
        runtimes.check_backend(backend)  # unknown or not installed -> clear error before loading anything
    _check_present(device, backend)
    if draft_device is not None:
        draft_device = draft_device.upper()
        if draft_device not in DEVICE_PROFILES:
            raise EdgegenError(f"unknown draft device '{draft_device}' (known: {', '.join(DEVICE_PROFILES)})")
        _check_present(draft_device, backend)
    if profile is None:
        profile = BACKEND_PROFILES.get(backend or "", {}).get(device) or DEVICE_PROFILES[device]
    prof = load_profile(profile)
    # a backend whose model takes embeddings itself (torch) needs no input-embedding graphs in the export
    graphs_for_embeddings = runtimes.needs_embeddings_graph(backend or prof.backend)
    folder = resolve_model(model, prof, embeddings=embeddings and graphs_for_embeddings)
    manifest = read_manifest(folder)

    def open_session(name: str, with_embeddings: bool = embeddings) -> runtimes.Session:
        options: dict[str, Any] = {"max_length": max_length, "threads": threads, **_npu_options(device, prof)}
        where, info = folder, manifest
        if with_embeddings and not embeddings and runtimes.needs_embeddings_graph(name):  # asked later (superposed)
            where = ensure_embeddings(folder)  # a cached auto-export gains the graphs once; others: clear error
            info = read_manifest(where)
        return runtimes.open_session(where, info, name, device=device, embeddings=with_embeddings, **options)

    if backend is None:
        backend = prof.backend if prof.backend != "auto" else choose_backend(folder, manifest, device, open_session)
    runtimes.graph_format(backend)
    session = open_session(backend)

    def open_drafter(name: str | Path) -> ModelDrafter:
        if str(name) == DEFAULT_DRAFT:
            draft_folder = default_drafter_model(prof.name)
        else:
            draft_folder = resolve_model(name, prof)
        draft_manifest = read_manifest(draft_folder)
        check_draft_compatible(folder, manifest, draft_folder, draft_manifest)
        where = draft_device or prof.draft_device or device
        draft_session = runtimes.open_session(draft_folder, draft_manifest, backend, device=where,
                                              max_length=session.max_length, threads=threads,
                                              **_npu_options(where, prof))
        head = (draft_manifest.extras.get("drafter") or {}).get("head_vocab")
        return ModelDrafter(draft_session, confidence=draft_confidence,
                            head_vocab=np.asarray(head) if head else None, target_vocab=manifest.vocab_size)

    drafter = open_drafter(draft) if draft is not None else None
    is_default = model is None or str(model) == "default"
    return Generator(folder, manifest, session, prof, drafter, open_embeddings=lambda: open_session(backend, True),
                     open_default_drafter=(lambda: open_drafter(DEFAULT_DRAFT)) if is_default else None,
                     prompt_cache=PromptCache(int(prompt_cache_mb * 2**20)) if prompt_cache_mb else None)


def _npu_options(device: str, profile: Any) -> dict[str, Any]:
    """Session options for a static-shape NPU graph: the profile's shapes, for what an export does not record
    (a drafter or LUD model exported without them, an NPU export made before max_generation_len)."""
    return {"static_shapes": dict(profile.static_shapes)} if device == "NPU" else {}


def _check_present(device: str, backend: str | None) -> None:
    """Refuse a device no installed runtime has here, before any export (which can take minutes)."""
    found = runtimes.available_devices()
    names = [backend] if backend else list(found)
    have = {d.split(".")[0] for name in names for d in found.get(name, [])}  # OpenVINO: "GPU.0", "GPU.1"
    if device in have or (device == "NPU" and _npuw_emulated()):
        return
    raise EdgegenError(f"device '{device}' is not present: {' and '.join(names)} can run on "
                       f"{', '.join(sorted(have)) or 'nothing here'}")


def _npuw_emulated() -> bool:
    """OpenVINO's NPUW places the NPU graph on the devices its variable names: the NPU path without an NPU."""
    try:
        from edgegen.runtimes.openvino_session import NPUW_ENV
    except ImportError:
        return False
    return bool(os.environ.get(NPUW_ENV))


def check_draft_compatible(folder: Path, manifest: Manifest, draft_folder: Path, draft: Manifest) -> None:
    """A drafter must share the target's vocabulary and tokenizer, or its tokens mean other things. A drafter
    with a reduced head (extras.drafter.head_vocab) must name target ids, and have been made for this vocabulary."""
    facts = draft.extras.get("drafter") or {}
    head = facts.get("head_vocab")
    vocab = facts.get("target_vocab_size", draft.vocab_size) if head else draft.vocab_size
    if vocab != manifest.vocab_size:
        raise EdgegenError(f"draft model {draft.name} has a vocabulary of {vocab} tokens; "
                           f"the target {manifest.name} has {manifest.vocab_size}")
    if head and (len(head) != draft.vocab_size or not 0 <= min(head) <= max(head) < manifest.vocab_size):
        raise EdgegenError(f"draft model {draft.name} has a malformed reduced head vocabulary")
    mine = TextTokenizer(folder, manifest).vocabulary()
    theirs = TextTokenizer(draft_folder, draft).vocabulary()
    if mine != theirs:
        raise EdgegenError(f"draft model {draft.name} uses another tokenizer than the target {manifest.name}")
