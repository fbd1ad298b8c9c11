"""Plain-step cost with and without the hidden-state output (issue 16), alternated in one process.

    python scripts/hidden_step_cost.py OLD_EXPORT NEW_EXPORT [rounds]

OLD_EXPORT: an int8 export made before the ``hidden_state`` edit; NEW_EXPORT: the same model with it. ONNX
Runtime runs each folder's graph; OpenVINO edits the IR at load, so its "before" session is opened with that
edit switched off. Each round times 16 one-token steps per session, sessions alternating; prints median ms
per step of: before, after (plain step), after with hidden=True.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

from edgegen.manifest import read_manifest
from edgegen.runtimes import open_session


def steps_ms(session, hidden: bool, n: int = 16) -> float:
    session.reset()
    session.forward(np.arange(200, 300, dtype=np.int64), last_only=True)
    token = np.array([42], np.int64)
    start = time.perf_counter()
    for _ in range(n):
        session.forward(token, hidden=hidden)
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    old, new = Path(sys.argv[1]), Path(sys.argv[2])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 15
    for backend in ("onnxruntime", "openvino"):
        if backend == "openvino":
            with mock.patch("edgegen.runtimes.openvino_session._add_hidden_output", return_value=False):
                before = open_session(new, read_manifest(new), backend)
        else:
            before = open_session(old, read_manifest(old), backend)
        after = open_session(new, read_manifest(new), backend)
        assert after.has_hidden and not before.has_hidden
        times: dict[str, list[float]] = {"before": [], "after": [], "after, hidden=True": []}
        for _ in range(rounds):
            times["before"].append(steps_ms(before, False))
            times["after"].append(steps_ms(after, False))
            times["after, hidden=True"].append(steps_ms(after, True))
        print(backend, "; ".join(f"{k}: {statistics.median(v):.2f} ms" for k, v in times.items()), flush=True)


if __name__ == "__main__":
    main()
