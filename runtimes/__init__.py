"""Execution backends behind one Session interface (runtimes.base.Session).

The only package that imports onnxruntime or openvino. Backends are registered by name and
imported lazily, so a user of one never pays the import of the other.
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
}


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


def open_session(folder: str | Path, manifest: Manifest, backend: str, device: str = "CPU",
                 embeddings: bool = False, **options: object) -> Session:
    """Load ``folder``'s graph for ``backend`` on ``device``; options go to the session class.

    embeddings: open the input-embedding graph instead, giving the session ``embed`` and
    ``forward_embeddings`` (an export without one is a one-line EdgegenError).
    """
    module, cls, _ = _entry(backend)
    if embeddings:
        manifest.embeddings_graph(graph_format(backend))  # the clear error before importing the runtime
        options["embeddings"] = True
    return getattr(importlib.import_module(module), cls)(Path(folder), manifest, device=device, **options)


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


__all__ = ["BACKENDS", "Session", "available_devices", "backend_for", "graph_format", "open_session",
           "runtime_versions"]
