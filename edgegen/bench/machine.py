"""The machine a bench ran on: CPU, cores, versions, and the memory-bandwidth ceiling of AR decoding.

Batch-1 AR decoding reads every weight once per token, so ``bandwidth / weight bytes`` is the most
tokens per second the memory system allows; a measured rate is reported as a fraction of it.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.manifest import read_manifest


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, OS, runtime and anchor versions, and the date."""
    from edgegen import __version__
    from edgegen.runtimes.baselines import versions

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "os": platform.platform(),
            "python": platform.python_version(), "edgegen": __version__, "versions": versions(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def machine_line(machine: dict[str, Any]) -> str:
    v = machine["versions"]
    return (f"{machine['cpu']}, {machine['usable_cores']} cores; onnxruntime {v['onnxruntime']}, "
            f"openvino {v['openvino']}, onnxruntime-genai {v['onnxruntime-genai']}, "
            f"openvino-genai {v['openvino-genai']}; {machine['date']}")


def read_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Single-thread memory bandwidth in GB/s: bytes read per second by a NumPy copy of a ``megabytes`` array
    (far beyond any cache), best of ``repeats``. Counting only the reads (a copy also writes as many
    bytes) keeps the ceiling conservative for a decoder, which mostly reads."""
    src = np.ones(megabytes * 2**20 // 8, np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return src.nbytes / best / 1e9


def weight_bytes(folder: Path, graph_format: str) -> int:
    """Bytes a decoding step reads of ``folder``'s graph of ``graph_format``: an ONNX graph file and the external
    data files beside it (``*.data``) less the tables the graph only gathers from (ONNX's float embedding: a step
    reads one row of it), or an OpenVINO IR's ``.bin`` (its XML holds only the topology; its int8 embedding,
    shared with the LM head, is read in full)."""
    graph = Path(folder) / read_manifest(folder).graphs[graph_format].path
    if graph.suffix == ".xml":
        return graph.with_suffix(".bin").stat().st_size
    files = [graph, *graph.parent.glob("*.data")]
    return sum(f.stat().st_size for f in files if f.is_file()) - _gathered_only_bytes(graph)


def _gathered_only_bytes(graph_path: Path) -> int:
    """Bytes of the ONNX graph's initializers that no op but Gather reads (lookup tables)."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(graph_path), load_external_data=False).graph
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, set()).add(node.op_type if (node.op_type, i) == ("Gather", 0) else "other")
    return sum(int(np.prod(t.dims)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
               for t in graph.initializer if readers.get(t.name) == {"Gather"})
