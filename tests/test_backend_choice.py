"""`load()`'s backend choice: the faster backend on this machine, measured so that a burst of other work
during the measurement cannot decide it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from edgegen.manifest import BACKEND_CHOICE
from edgegen.models import choose_backend
from tests.fakes import TinyLM


class Bursty(TinyLM):
    """A fake whose steps cost ``row_s``, except ``burst`` early steps that another process slows 20x."""

    def __init__(self, row_s: float, burst: int = 0) -> None:
        super().__init__(seed=0, sharpness=1.0, max_length=256)
        self.row_s, self._burst = row_s, burst

    def forward(self, token_ids, last_only: bool = False, hidden: bool = False):
        slowed = self._burst > 0 and self.position > 0
        if slowed:
            self._burst -= 1
            self.row_s *= 20
        try:
            return super().forward(token_ids, last_only)
        finally:
            if slowed:
                self.row_s /= 20


def test_the_faster_backend_wins_despite_a_burst_and_is_remembered(tmp_path: Path) -> None:
    manifest = SimpleNamespace(graphs={"onnx": None, "openvino": None})
    # the faster backend's first steps are slowed by "another process": a measurement that ran each
    # backend once, in turn, would pick the slower one
    sessions = {"onnxruntime": lambda: Bursty(2e-3, burst=6), "openvino": lambda: Bursty(6e-3)}
    assert choose_backend(tmp_path, manifest, "CPU", lambda name: sessions[name]()) == "onnxruntime"
    record = json.loads((tmp_path / BACKEND_CHOICE).read_text())
    assert record["CPU"]["backend"] == "onnxruntime"
    sessions["onnxruntime"] = lambda: Bursty(50e-3)  # remembered: not measured again
    assert choose_backend(tmp_path, manifest, "CPU", lambda name: sessions[name]()) == "onnxruntime"
