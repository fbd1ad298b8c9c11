"""A peer that cannot run the model (it fails to load, or fails while generating) is a row of the bench table with
its one-line reason; the others are measured as usual, and edgegen's own failure is never hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegen.bench.engines import EngineSpec, open_engines
from edgegen.bench.report import markdown_table, summarize
from edgegen.bench.runner import Prompt, timed_runs


class Engine:
    backend = "openvino"

    def __init__(self, name: str, fail: str | None = None) -> None:
        self.name, self.fail = name, fail

    def generate(self, prompt_ids: list[int], new_tokens: int, on_token) -> dict[str, float]:
        if self.fail:
            raise RuntimeError(f"{self.fail}\nsecond line of a long runtime message")
        for t in range(new_tokens):
            on_token(t)
        return {}


def _spec(label: str, kind: str = "anchor") -> EngineSpec:
    return EngineSpec(label, kind, "openvino", "int8", Path("m"))  # type: ignore[arg-type]


PROMPTS = [Prompt("p1", "x", False, "code"), Prompt("p2", "y", False, "code")]
IDS = {"p1": [1, 2], "p2": [3]}


def test_a_peer_failing_mid_run_is_left_out_with_its_reason() -> None:
    good, bad = _spec("edgegen-ov", "edgegen"), _spec("peer-genai")
    failed: dict[str, str] = {}
    runs = timed_runs([(good, Engine("g")), (bad, Engine("b", "Vocab sizes should be the same"))], PROMPTS, IDS, 4,
                      warmup=0, failed=failed)
    assert failed == {"peer-genai": "RuntimeError: Vocab sizes should be the same"}
    assert [r.label for r in runs] == ["edgegen-ov", "edgegen-ov"]
    table = markdown_table(summarize(runs, skipped=[(bad, failed["peer-genai"])]))
    assert "| peer-genai | openvino | int8 | — | — | — | cannot run: RuntimeError: Vocab sizes should be the same |" \
        in table
    assert "| edgegen-ov | openvino | int8 |" in table


def test_edgegen_failing_mid_run_stops_the_bench() -> None:
    with pytest.raises(RuntimeError, match="broken"):
        timed_runs([(_spec("edgegen-ov", "edgegen"), Engine("e", "broken"))], PROMPTS, IDS, 4, warmup=0)


def test_a_peer_that_cannot_load_is_a_row_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgegen.bench.engines as engines

    def open_engine(spec: EngineSpec, device: str = "CPU"):
        if spec.is_anchor:
            raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:97:\nmore")
        return Engine(spec.label)

    monkeypatch.setattr(engines, "open_engine", open_engine)
    notes: list[str] = []
    skipped: list[tuple[EngineSpec, str]] = []
    opened = open_engines([_spec("edgegen-ov", "edgegen"), _spec("peer-genai")], note=notes.append, skipped=skipped)
    assert [s.label for s, _ in opened] == ["edgegen-ov"]
    assert [(s.label, reason) for s, reason in skipped] == [
        ("peer-genai", "cannot load m: RuntimeError: Exception from src/inference/src/cpp/core.cpp:97:")]
    assert notes == ["peer-genai: cannot load m: RuntimeError: Exception from src/inference/src/cpp/core.cpp:97:, "
                     "skipped"]
    runs = timed_runs(opened, PROMPTS, IDS, 4, warmup=0, loads=["none", "busy"])
    table = markdown_table(summarize(runs, skipped=skipped))
    assert table.count("| peer-genai | openvino | int8 | — | — | — | cannot run: cannot load m") == 2  # per load
