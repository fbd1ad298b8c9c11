"""Execution backends behind one Session interface (runtimes.base.Session).

The only package that imports onnxruntime or openvino (and, for the optional torch backend, torch at
session open). Backends are registered by name and imported lazily, so a user of one never pays the
import of the other.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.manifest import Manifest
from edgegen.runtimes.base import Session

# backend name -> (module, session class, graph format it runs)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "onnxruntime": ("edgegen.runtimes.onnxruntime_session", "OnnxRuntimeSession", "onnx"),
    "openvino": ("edgegen.runtimes.openvino_session", "OpenVINOSession", "openvino"),
    "torch": ("edgegen.runtimes.torch_session", "TorchSession", "torch"),
}
# (backend, device) -> (module, session class) where a device needs its own session: NPUW's static graphs
DEVICE_SESSIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("openvino", "NPU"): ("edgegen.runtimes.openvino_npu", "OpenVINONPUSession"),
}
# Backends whose model takes input embeddings itself: superposed decoding needs no input-embedding graph.
NATIVE_EMBEDDINGS = frozenset({"torch"})
# How to install a backend that is not part of the base install.
_EXTRAS = {"torch": "pip install 'edgegen[torch]'"}


def graph_format(backend: str) -> str:
    return _entry(backend)[2]


def backend_for(fmt: str) -> str:
    """The backend that runs graphs of format ``fmt`` ("onnx" -> "onnxruntime")."""
    for name, (_, _, graph_fmt) in BACKENDS.items():
        if graph_fmt == fmt:
            return name
    raise EdgegenError(f"no backend runs {fmt} graphs (known formats: {', '.join(v[2] for v in BACKENDS.values())})")


def _entry(backend: str) -> tuple[str, str, str]:
    if backend not in BACKENDS:
        raise EdgegenError(f"unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
    return BACKENDS[backend]


def check_backend(backend: str) -> None:
    """Refuse an unknown backend, or one whose library is not installed here, in one line."""
    _module(backend)


def needs_embeddings_graph(backend: str) -> bool:
    """Whether superposed decoding on ``backend`` needs the export's input-embedding graph."""
    return backend not in NATIVE_EMBEDDINGS


def _module(backend: str):
    name = _entry(backend)[0]
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if (e.name or "").partition(".")[0] == "edgegen":
            raise  # a defect of this install, not a missing backend library: no install hint would help
        hint = _EXTRAS.get(backend, f"pip install {e.name or backend}")
        raise EdgegenError(f"the {backend} backend is not installed here ({e}): {hint}") from None


def open_session(folder: str | Path, manifest: Manifest, backend: str, device: str = "CPU",
                 embeddings: bool = False, **options: object) -> Session:
    """Load ``folder``'s graph for ``backend`` on ``device``; options go to the session class.

    embeddings: open the input-embedding graph instead, giving the session ``embed`` and
    ``forward_embeddings`` (an export without one is a one-line EdgegenError).
    """
    cls = _entry(backend)[1]
    if (backend, device.upper()) in DEVICE_SESSIONS:  # a device with its own session class (static NPU shapes)
        module, cls = DEVICE_SESSIONS[backend, device.upper()]
        return getattr(importlib.import_module(module), cls)(Path(folder), manifest, embeddings=embeddings, **options)
    if embeddings:
        if needs_embeddings_graph(backend):
            manifest.embeddings_graph(graph_format(backend))  # the clear error before importing the runtime
        options["embeddings"] = True
    return getattr(_module(backend), cls)(Path(folder), manifest, device=device, **options)


def available_devices() -> dict[str, list[str]]:
    """Devices each installed backend can run on here, e.g. {"onnxruntime": ["CPU"], "openvino": ["CPU"]}."""
    found: dict[str, list[str]] = {}
    for name, (module, _, _) in BACKENDS.items():
        try:
            found[name] = importlib.import_module(module).available_devices()
        except ImportError:
            found[name] = []
    return found


def runtime_versions() -> dict[str, str]:
    versions = {}
    for dist in ("onnxruntime", "openvino"):
        try:
            versions[dist] = importlib.import_module(dist).__version__
        except ImportError:
            versions[dist] = "not installed"
    return versions


__all__ = ["BACKENDS", "NATIVE_EMBEDDINGS", "Session", "available_devices", "backend_for", "check_backend",
           "graph_format", "needs_embeddings_graph", "open_session", "runtime_versions"]
