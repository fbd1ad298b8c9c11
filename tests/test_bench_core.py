"""The bench core: engines taking turns under each background load, the busy loop, fixed-length prompts, the
report read from engine descriptions (not names), the chat table and per-engine peak RSS."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from edgegen.bench.chat import ChatTurn, chat_lines, chat_table
from edgegen.bench.engines import EngineSpec, edgegen_spec
from edgegen.bench.load import background_load, busy_core
from edgegen.bench.report import headline_lines, markdown_table, summarize
from edgegen.bench.runner import Prompt, Run, Timing, take_turns
from edgegen.bench.ttft import fixed_length_prompts
from edgegen.errors import EdgegenError


def _children() -> list[int]:
    pid = os.getpid()
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_take_turns_alternates_engines_per_prompt_under_each_load() -> None:
    calls: list[tuple[str, str, int]] = []

    def trial(engine: str, prompt: Prompt) -> str:
        calls.append((engine, prompt.id, len(_children())))
        return f"{engine}:{prompt.id}"

    specs = [EngineSpec(name, "edgegen", "onnxruntime", "int8", Path("m")) for name in ("a", "b")]
    prompts = [Prompt("p1", "x", False, "code"), Prompt("p2", "y", False, "code")]
    before = len(_children())
    turns = take_turns(list(zip(specs, ["a", "b"], strict=True)), prompts, trial, warmup=1, loads=["none", "busy"])
    order = [(e, p) for e, p, _ in calls]
    per_load = [("a", "p1"), ("b", "p1"), ("a", "p1"), ("b", "p1"), ("a", "p2"), ("b", "p2")]  # warm-ups first
    assert order == per_load * 2
    assert [n - before for _, _, n in calls] == [0] * 6 + [1] * 6  # the busy loop runs only under "busy"
    assert [(t.engine.label, t.prompt.id, t.load) for t in turns] == [
        ("a", "p1", "none"), ("b", "p1", "none"), ("a", "p2", "none"), ("b", "p2", "none"),
        ("a", "p1", "busy"), ("b", "p1", "busy"), ("a", "p2", "busy"), ("b", "p2", "busy")]
    assert turns[1].result == "b:p1"
    assert len(_children()) == before


def test_busy_load_spins_on_one_core_and_stops_on_error() -> None:
    before = set(_children())
    with pytest.raises(RuntimeError, match="boom"), background_load("busy"):
        (child,) = set(_children()) - before
        start = _cpu_ticks(child)
        time.sleep(1.0)
        assert os.sched_getaffinity(child) == {busy_core()}
        assert _cpu_ticks(child) - start >= 5  # spinning (a sleeping process gets 0), even on a shared machine
        raise RuntimeError("boom")
    assert set(_children()) == before and not Path(f"/proc/{child}").exists()
    with pytest.raises(EdgegenError, match="unknown background load"), background_load("heavy"):
        pass


def test_fixed_length_prompts_have_the_length_and_distinct_starts() -> None:
    stream = list(range(1000, 1300))  # 300 distinct ids
    prompts, ids = fixed_length_prompts(stream, [128, 1000], count=3)
    assert [p.category for p in prompts] == ["128 tokens"] * 4 + ["1000 tokens"] * 4
    assert all(len(ids[p.id]) == int(p.category.split()[0]) for p in prompts)
    for n in (128, 1000):
        firsts = [ids[p.id][:16] for p in prompts if p.category == f"{n} tokens"]
        assert len({tuple(f) for f in firsts}) == 4  # warm-up and timed prompts share no first block
    assert ids["len1000-0"][:300] == stream and ids["len1000-0"][300:600] == stream


def _run(spec: EngineSpec, prompt: str, tokens_per_s: float, tokens: list[int], load: str = "none") -> Run:
    return Run(spec, spec.backend or "onnxruntime", prompt, "code", 5, 0,
               Timing(tokens, 0.05, (len(tokens) - 1) / tokens_per_s), load)


def test_report_reads_identity_from_specs_not_labels() -> None:
    m = Path("m")
    # labels chosen to mislead any name parsing: the anchor is called "edgegen-x", edgegen's AR "openvino-genai"
    anchor = EngineSpec("edgegen-x", "anchor", "openvino", "int8", m)
    ar = EngineSpec("openvino-genai", "edgegen", "onnxruntime", "int8", m)
    default = edgegen_spec(m, None, "int8", "auto")
    a, b = [5, 6, 7, 8, 9], [5, 6, 7, 1, 1]
    runs = []
    for load, scale in (("none", 1.0), ("busy", 0.5)):
        runs += [_run(default, "p", 120.0 * scale, a, load), _run(ar, "p", 100.0 * scale, b, load),
                 _run(anchor, "p", 80.0 * scale, a, load)]
    rows = summarize(runs, peak_rss_mb={("edgegen-x", "int8"): 900.0, ("openvino-genai", "int8"): 700.0})
    by = {(r.load, r.engine): r for r in rows}
    assert by["none", "openvino-genai"].x_fastest == 1.25 and by["none", "edgegen-x"].x_fastest == 1.0
    assert by["none", "openvino-genai"].identical == {"edgegen-x": (0, 1)}
    assert by["none", "edgegen-x"].identical == {}
    assert by["busy", "edgegen-default"].x_edgegen_ar == 1.2 and by["busy", "edgegen-default"].x_fastest == 1.5
    table = markdown_table(rows)
    assert table.count("Background load:") == 2 and table.index("Background load: none") == 0
    assert "| peak RSS MB |" in table and "| edgegen-x | openvino | int8 | 80.0 | 50.0 | 1.00x | — | 900 |" in table
    assert headline_lines(rows)[0].startswith("edgegen-default (int8, edgegen.load() on onnxruntime")
    assert "1.20x edgegen's own AR" in headline_lines(rows)[1] and "under load 'busy'" in headline_lines(rows)[1]


def test_chat_table_per_turn() -> None:
    turns = [ChatTurn("edgegen", 1, "none", 100.0, 20, 40), ChatTurn("ovg", 1, "none", 200.0, 20, None),
             ChatTurn("edgegen", 2, "none", 110.0, 20, 90), ChatTurn("ovg", 2, "none", 100.0, 20, None)]
    lines = chat_table(turns).splitlines()
    assert lines[0] == "| turn | prompt tokens | edgegen TTFT ms | ovg TTFT ms | edgegen / ovg |"
    assert lines[2] == "| 1 | 40 | 100.0 | 200.0 | 0.50x |" and lines[3] == "| 2 | 90 | 110.0 | 100.0 | 1.10x |"
    assert chat_lines(turns)[0].startswith("edgegen (none): turn 2 TTFT 110 ms = 1.10x turn 1")


def test_peak_rss_is_the_engines_own(int8_model: Path) -> None:
    from edgegen.bench.isolated import IsolatedEngine
    from edgegen.bench.runner import measure

    held = np.ones(2**30 // 8)  # 1 GiB in the bench process must not count against the engine
    held[::512] = 2.0
    engine = IsolatedEngine(edgegen_spec(int8_model, "onnxruntime", "int8"))
    try:
        measure(engine, list(range(100, 140)), 4)
        mb = engine.peak_rss_mb()
    finally:
        engine.close()
    assert 100 < mb < 1024


def test_chat_bench_turn_one_is_a_cold_prefill(int8_model: Path) -> None:
    """The chat bench's warm-up leaves nothing of the chat template in the cache: turn 1 prefills its whole
    prompt, as a fresh conversation does (a warm-up through the template made turn 1 a cache hit)."""
    from edgegen.bench.chat import EdgegenChat

    chat = EdgegenChat(int8_model, max_new_tokens=4)
    first_turn = chat._gen._prompt_ids([{"role": "user", "content": "Hi"}], chat=True)
    assert chat._gen.session.position > 0  # the warm-up ran
    assert chat._gen.session.common_prefix(first_turn) == 0


def test_a_strategy_that_releases_its_tokens_at_the_end_is_timed_from_its_first_decided_token(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import edgegen.bench.runner as runner
    from edgegen.bench.engines import FIRST_TOKEN_AT

    clock = iter(range(100))
    monkeypatch.setattr(runner.time, "perf_counter", lambda: float(next(clock)))

    class LateEngine:  # decides a token per tick, releases all four at the end (as superposed decoding does)
        name = "late"

        def generate(self, prompt_ids: list[int], new_tokens: int, on_token) -> dict[str, float]:
            first = runner.time.perf_counter()  # tick 1: the first token decided (tick 0: the call)
            for _ in range(2):
                runner.time.perf_counter()
            for token in range(new_tokens):
                on_token(token)  # ticks 4..7
            return {FIRST_TOKEN_AT: first, "target_steps": 4.0}

    timing = runner.measure(LateEngine(), [1, 2], 4)
    assert (timing.ttft_s, timing.decode_s) == (1.0, 6.0)  # not 4.0 and 3.0 from the release stamps
    assert timing.engine_metrics == {"target_steps": 4.0}


def test_weight_bytes_leave_out_tables_only_gathered_from(tmp_path: Path) -> None:
    # A step reads every matmul weight but one row of an embedding table: the bandwidth ceiling counts what is read.
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgegen.bench.machine import weight_bytes
    from edgegen.manifest import GraphInfo, KVCacheLayout, Manifest

    table, shared, head = (np.ones(s, np.float32) for s in ((1000, 64), (64, 64), (64, 1000)))
    nodes = [helper.make_node("Gather", ["table", "ids"], ["x"]),  # the embedding: gathered only
             helper.make_node("Gather", ["shared", "ids"], ["y"]),  # gathered and multiplied: read in full
             helper.make_node("MatMul", ["x", "shared"], ["z"]), helper.make_node("MatMul", ["z", "head"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for a, n in ((table, "table"), (shared, "shared"),
                                                                          (head, "head"))])
    (tmp_path / "onnx").mkdir()
    onnx.save(helper.make_model(graph), str(tmp_path / "onnx" / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    (tmp_path / "tokenizer.json").write_text("{}")
    kv = KVCacheLayout(stateful=False, shared_buffer=True)
    Manifest("m", "llama", 1, 64, 1, 1, 64, 1000, 16, None, [0], False, chat_template=None,
             graphs={"onnx": GraphInfo("onnx", "onnx/model.onnx", "fp32", {}, "logits", kv)}).write(tmp_path)
    files = (tmp_path / "onnx" / "model.onnx").stat().st_size + (tmp_path / "onnx" / "model.onnx.data").stat().st_size
    assert weight_bytes(tmp_path, "onnx") == files - table.nbytes


def test_an_isolated_engine_times_in_its_own_process_with_the_same_tokens(int8_model: Path, tmp_path: Path) -> None:
    from edgegen.bench.engines import open_engine
    from edgegen.bench.isolated import IsolatedEngine
    from edgegen.bench.runner import measure

    spec = edgegen_spec(int8_model, "onnxruntime", "int8")
    ids = [1, 504, 3136, 282, 260, 2377]
    isolated = IsolatedEngine(spec)
    try:
        assert isolated.backend == "onnxruntime" and isolated._process.pid != os.getpid()
        remote = measure(isolated, ids, 8)
        assert remote.tokens == measure(open_engine(spec), ids, 8).tokens
        assert remote.ttft_s > 0 and remote.decode_s > 0 and "target_ms" in remote.engine_metrics
    finally:
        isolated.close()
    with pytest.raises(EdgegenError):  # an engine that cannot open says so in the parent, as in-process
        IsolatedEngine(edgegen_spec(tmp_path / "missing", "onnxruntime", "int8"))
