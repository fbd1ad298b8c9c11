"""Prefill time of edgegen's sessions against openvino-genai's on the same export (issue 14, docs/performance.md).

    python scripts/prefill_compare.py FOLDER --tokens 1000 --rounds 8 --engine ov:512 --engine ov:2048 --engine genai

Engines: ``ov:CHUNK`` (OpenVINOSession, the prompt forwarded CHUNK tokens at a time), ``ort:CHUNK`` (ONNX Runtime)
and ``genai`` (openvino-genai as ``edgegen bench`` runs it, time to its first token). Every round takes a fresh
prompt cut from the bench's text, and the engines take turns (reversed every other round); the first round is a
warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from edgegen.bench.runner import measure
from edgegen.bench.ttft import packaged_text_ids
from edgegen.manifest import read_manifest
from edgegen.runtimes import open_session
from edgegen.runtimes.baselines import open_anchor


def _genai(folder: Path):
    """openvino-genai as the bench runs it (runtimes.baselines), timed by the bench's one timing loop."""
    engine = open_anchor("openvino-genai", folder)
    return lambda ids: measure(engine, ids, 1).ttft_s


def _session(folder: Path, backend: str, chunk: int):
    session = open_session(folder, read_manifest(folder), backend, "CPU")

    def run(ids: list[int]) -> float:
        session.reset()
        x = np.asarray(ids, np.int64)
        start = time.perf_counter()
        for i in range(0, len(x), chunk):
            logits = session.forward(x[i:i + chunk], last_only=True)
        int(np.argmax(logits[-1]))
        return time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--engine", action="append", required=True, help="ov:CHUNK, ort:CHUNK or genai")
    args = parser.parse_args()
    backends = {"ov": "openvino", "ort": "onnxruntime"}
    engines = {}
    for name in args.engine:
        kind, _, chunk = name.partition(":")
        engines[name] = _genai(args.folder) if kind == "genai" else _session(args.folder, backends[kind], int(chunk))
    stream = packaged_text_ids(args.folder)
    stream = stream * (args.tokens * (args.rounds + 1) // len(stream) + 2)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for r in range(args.rounds + 1):
        ids = stream[r * 97: r * 97 + args.tokens]
        for name in (args.engine if r % 2 == 0 else args.engine[::-1]):
            seconds = engines[name](ids)
            if r:
                times[name].append(seconds)
    base = statistics.median(times[args.engine[0]])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:10s} {median * 1e3:8.1f} ms  x{median / base:.3f}  rounds: {[round(v * 1e3) for v in values]}")


if __name__ == "__main__":
    main()
