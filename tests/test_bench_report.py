"""Bench report formatting on synthetic numbers: medians, ratios to the fastest baseline, identity, table."""

from __future__ import annotations

import json
from pathlib import Path

from edgegen.bench.engines import EngineSpec
from edgegen.bench.report import markdown_table, same_tokens, summarize, write_reports
from edgegen.bench.runner import Run, Timing, load_prompts, measure

ANCHORS = {"openvino-genai", "onnxruntime-genai"}


def _run(engine: str, backend: str, weights: str, prompt: str, tokens_per_s: float, ttft_ms: float,
         tokens: list[int]) -> Run:
    decode_s = (len(tokens) - 1) / tokens_per_s
    spec = EngineSpec(engine, "anchor" if engine in ANCHORS else "edgegen", backend, weights, Path("m"))
    return Run(spec, backend, prompt, prompt.split("-")[0], 5, 0, Timing(tokens, ttft_ms / 1e3, decode_s))


def _runs() -> list[Run]:
    a, b = [5, 6, 7, 8, 9], [5, 6, 7, 8, 1]
    return [
        _run("edgegen-ort", "onnxruntime", "int8", "code-a", 100.0, 50.0, a),
        _run("edgegen-ort", "onnxruntime", "int8", "chat-b", 120.0, 70.0, a),
        _run("edgegen-ort", "onnxruntime", "int8", "chat-c", 140.0, 90.0, a),
        _run("openvino-genai", "openvino", "int8", "code-a", 80.0, 40.0, a),
        _run("openvino-genai", "openvino", "int8", "chat-b", 80.0, 40.0, b),
        _run("openvino-genai", "openvino", "int8", "chat-c", 80.0, 40.0, [5, 6, 2, 0, 0]),  # EOS (2) at 2
        _run("onnxruntime-genai", "onnxruntime", "int8", "code-a", 60.0, 30.0, a),
        _run("onnxruntime-genai", "onnxruntime", "int8", "chat-b", 60.0, 30.0, a),
        _run("onnxruntime-genai", "onnxruntime", "int8", "chat-c", 60.0, 30.0, a),
        _run("edgegen-ort", "onnxruntime", "int4", "code-a", 90.0, 20.0, a),  # no baseline at int4
    ]


def test_medians_ratios_and_identity() -> None:
    rows = {(r.engine, r.weights): r for r in summarize(_runs(), eos_ids={2})}
    mine = rows[("edgegen-ort", "int8")]
    assert abs(mine.tokens_per_s - 120.0) < 1e-9 and abs(mine.ttft_ms - 70.0) < 1e-9 and mine.runs == 3
    assert abs(mine.x_fastest - 1.5) < 1e-9  # fastest baseline at int8: openvino-genai, 80 tokens/s
    assert abs(rows[("onnxruntime-genai", "int8")].x_fastest - 0.75) < 1e-9
    assert rows[("openvino-genai", "int8")].x_fastest == 1.0
    # chat-b differs in its last token; chat-c matches up to openvino-genai's EOS
    assert mine.identical == {"openvino-genai": (2, 3), "onnxruntime-genai": (3, 3)}
    assert rows[("openvino-genai", "int8")].identical == {}
    assert rows[("edgegen-ort", "int4")].x_fastest is None


def test_same_tokens_cuts_at_first_eos() -> None:
    assert same_tokens([1, 2, 3], [1, 2, 3])
    assert not same_tokens([1, 2, 3], [1, 2, 4])
    assert same_tokens([1, 9, 3], [1, 9, 4], eos_ids={9})
    assert same_tokens([1, 7, 5], [1, 7, 9], eos_ids={9})


def test_markdown_table() -> None:
    table = markdown_table(summarize(_runs(), eos_ids={2}))
    lines = table.splitlines()
    assert lines[0] == "| engine | backend | weights | tokens/s | TTFT ms | x fastest baseline | identical |"
    assert len(lines) == 2 + 4  # header, rule, 3 engines at int8, 1 at int4
    assert lines[2] == ("| edgegen-ort | onnxruntime | int8 | 120.0 | 70.0 | 1.50x | "
                        "2/3 vs openvino-genai, 3/3 vs onnxruntime-genai |")
    assert lines[3].startswith("| openvino-genai | openvino | int8 | 80.0 | 40.0 | 1.00x | — |")
    assert lines[-1] == "| edgegen-ort | onnxruntime | int4 | 90.0 | 20.0 | — | n/a |"


def test_write_reports(tmp_path) -> None:
    runs = _runs()
    rows = summarize(runs, eos_ids={2})
    machine = {"cpu": "Test CPU", "usable_cores": 2, "date": "2026-01-01",
               "versions": {k: "1" for k in ("onnxruntime", "openvino", "onnxruntime-genai", "openvino-genai")}}
    paths = write_reports(tmp_path, runs, rows, {"command": "edgegen bench --x", "new_tokens": 5}, machine,
                          ["onnxruntime-genai: skipped"])
    data = json.loads((tmp_path / "bench.json").read_text())
    assert len(data["runs"]) == len(runs) and data["runs"][0]["timing"]["tokens_per_s"] > 0
    md = (tmp_path / "bench.md").read_text()
    assert "`edgegen bench --x`" in md and "Test CPU, 2 cores" in md and "- onnxruntime-genai: skipped" in md
    assert "| code tokens/s | chat tokens/s |" in md
    assert tmp_path / "bench.json" in paths


def test_measure_and_prompts() -> None:
    class Fake:
        name, backend = "fake", "onnxruntime"

        def generate(self, prompt_ids, new_tokens, on_token):
            for t in range(new_tokens):
                on_token(t)
            return {"x": 1.0}

    timing = measure(Fake(), [1, 2], 4)
    assert timing.tokens == [0, 1, 2, 3] and timing.engine_metrics == {"x": 1.0} and timing.ttft_s >= 0
    prompts = load_prompts("all")
    assert len(prompts) == 16 and {p.category for p in prompts} == {"code", "chat"}
    assert all(p.chat == (p.category == "chat") for p in prompts)
    assert len(load_prompts("code", limit=2)) == 2


def test_a_second_model_in_a_run_is_compared_within_itself() -> None:
    def run(label: str, strategy: str, model: str, tokens_per_s: float, tokens: list[int]) -> Run:
        spec = EngineSpec(label, "edgegen", "openvino", "int4", Path(model or "m"), strategy, {}, model)
        return Run(spec, "openvino", "code-a", "code", 5, 0, Timing(tokens, 0.1, (len(tokens) - 1) / tokens_per_s))

    a, b = [5, 6, 7, 8, 9], [5, 6, 1, 1, 1]
    rows = {r.engine: r for r in summarize([
        run("edgegen-ov", "ar", "", 100.0, a),
        run("edgegen-ov-prompt-lookup", "prompt-lookup", "", 150.0, a),
        run("edgegen-ov-lud", "ar", "lud", 50.0, b),  # another model: another AR, other tokens
        run("edgegen-ov-lud-lexical", "lexical", "lud", 75.0, b),
    ])}
    assert abs(rows["edgegen-ov-prompt-lookup"].x_edgegen_ar - 1.5) < 1e-9
    assert abs(rows["edgegen-ov-lud-lexical"].x_edgegen_ar - 1.5) < 1e-9  # against the LUD model's AR, not 0.75
    assert rows["edgegen-ov-lud-lexical"].identical == {"edgegen-ov-lud": (1, 1)}
    assert rows["edgegen-ov-prompt-lookup"].identical == {"edgegen-ov": (1, 1)}
