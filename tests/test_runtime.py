"""The Session interface on both backends: rollback, cache growth, multi-token forwards."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgegen.export.graph_edits import EDITED_SUFFIX
from edgegen.manifest import ROW_PAD, read_manifest
from edgegen.runtimes import open_session

BACKENDS = ["onnxruntime", "openvino"]
# Logits are ~20 in magnitude; OpenVINO picks kernels by the number of rows, which moves fp32 logits
# by up to ~1e-2 between a one-pass and an incremental run. A wrong cache moves them by whole units.
ATOL = 2e-2


def _ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(200, 20000, size=n).astype(np.int64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_trim_rolls_back_exactly(backend: str, fp32_model: Path) -> None:
    session = open_session(fp32_model, read_manifest(fp32_model), backend)
    prompt, cont = _ids(12), _ids(8, seed=1)
    straight = session.forward(np.concatenate([prompt, cont]))[-len(cont):]

    session.reset()
    session.forward(prompt)
    session.forward(_ids(5, seed=2))  # rejected draft tokens
    session.trim(len(prompt))
    assert session.position == len(prompt)
    rolled = session.forward(cont)
    np.testing.assert_allclose(rolled, straight, atol=ATOL)
    assert (rolled.argmax(-1) == straight.argmax(-1)).all()


@pytest.mark.parametrize("window", [None, 40])
def test_openvino_rollbacks_masked_then_compacted(window: int | None, fp32_model: Path) -> None:
    # OpenVINO keeps rolled-back slots in its state, masked out, and rewrites the state after 128 of them
    # (or before a sliding window would count them): 50 steps of 1 kept + 3 rolled-back tokens cross both.
    session = open_session(fp32_model, read_manifest(fp32_model), "openvino", paged=False)  # the stateful path
    session._window = window  # a llama has none: 40 forces the sliding-window compaction path
    prompt, kept = _ids(12), _ids(50, seed=3)
    straight = session.forward(np.concatenate([prompt, kept]))[len(prompt) - 1:]

    session.reset()
    rows = [session.forward(prompt)[-1:]]
    most_dead = 0
    for i, token in enumerate(kept):
        rows.append(session.forward(np.concatenate([[token], _ids(3, seed=10 + i)]))[:1])
        session.trim(len(prompt) + i + 1)
        most_dead = max(most_dead, len(session._slots) - session.position)
    assert session.position == len(prompt) + len(kept)
    assert most_dead >= (3 if window else 120)  # the masked path really ran
    assert len(session._slots) - session.position < 128  # and the state was compacted
    rolled = np.concatenate(rows)
    np.testing.assert_allclose(rolled, straight, atol=ATOL)
    assert (rolled.argmax(-1) == straight.argmax(-1)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_incremental_equals_one_pass_beyond_initial_capacity(backend: str, fp32_model: Path) -> None:
    # 530 tokens crosses the ONNX session's first KV allocation (512 slots), forcing a regrow.
    session = open_session(fp32_model, read_manifest(fp32_model), backend)
    ids = _ids(530)
    whole = session.forward(ids)
    session.reset()
    session.forward(ids[:505])
    steps = np.concatenate([session.forward(ids[i:i + 1]) for i in range(505, 530)])
    np.testing.assert_allclose(steps, whole[505:], atol=ATOL)
    assert (steps.argmax(-1) == whole[505:].argmax(-1)).all()
    assert session.position == 530


def test_last_only_and_limits(fp32_model: Path) -> None:
    from edgegen.errors import EdgegenError

    session = open_session(fp32_model, read_manifest(fp32_model), "onnxruntime", max_length=16)
    assert session.forward(_ids(10), last_only=True).shape == (1, session.manifest.vocab_size)
    with pytest.raises(EdgegenError, match="exceeds"):
        session.forward(_ids(7))
    with pytest.raises(ValueError):
        session.trim(11)


def _linked_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def int8_before_edits(int8_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The int8 export as edgegen wrote it before its graph edits: the builder's graph, no edits recorded."""
    manifest = read_manifest(int8_model)
    graph = manifest.graph("onnx")
    builder_graph = graph.path.replace(EDITED_SUFFIX, ".onnx")
    out = tmp_path_factory.mktemp("int8-before-edits")
    for rel in (builder_graph, builder_graph + ".data", manifest.tokenizer, manifest.chat_template):
        if rel and (int8_model / rel).is_file():
            _linked_copy(int8_model / rel, out / rel)
    replace(manifest, graphs={"onnx": replace(graph, path=builder_graph, edits=[])}, embeddings=None).write(out)
    return out


@pytest.mark.parametrize("export", ["edited", "before_edits"])
def test_one_row_steps_equal_multi_row_rows(export: str, int8_model: Path, int8_before_edits: Path) -> None:
    # int8 activation quantization turns attention's lone-row path into logit differences of 1-2 (REFERENCE.md):
    # a one-token step must give bitwise the row a multi-token forward gives, so drafting reproduces AR.
    folder = int8_model if export == "edited" else int8_before_edits
    session = open_session(folder, read_manifest(folder), "onnxruntime")
    assert (ROW_PAD in session.manifest.graph("onnx").edits) == (export == "edited")
    _assert_steps_equal_rows(session, _ids(30), _ids(10, seed=1))


def _assert_steps_equal_rows(session, prompt: np.ndarray, cont: np.ndarray) -> None:
    """``cont`` fed one token per call after ``prompt`` gives bitwise the rows of one multi-token call."""
    session.forward(prompt)
    multi = session.forward(cont)
    session.reset()
    session.forward(prompt)
    single = np.concatenate([session.forward(cont[i:i + 1]) for i in range(len(cont))])
    np.testing.assert_array_equal(single, multi)


@pytest.mark.parametrize("backend", BACKENDS)
def test_last_only_is_the_last_row(backend: str, int8_model: Path, int8_before_edits: Path) -> None:
    folders = [int8_model] + ([int8_before_edits] if backend == "onnxruntime" else [])
    for folder in folders:
        session = open_session(folder, read_manifest(folder), backend)
        ids = _ids(40)
        full = session.forward(ids)
        session.reset()
        last = session.forward(ids, last_only=True)
        assert last.shape == (1, session.manifest.vocab_size)
        np.testing.assert_allclose(last, full[-1:], atol=ATOL)
        assert session.position == 40 and session.forward(_ids(3, seed=4)).shape[0] == 3  # all rows again


@pytest.mark.parametrize("backend", BACKENDS)
def test_session_remembers_its_cached_ids(backend: str, fp32_model: Path) -> None:
    session = open_session(fp32_model, read_manifest(fp32_model), backend)
    ids = _ids(20)
    session.forward(ids[:12])
    session.forward(ids[12:])
    assert session.common_prefix(list(ids)) == 20
    assert session.common_prefix([*ids[:7], 1, *ids[8:]]) == 7
    assert session.common_prefix(list(ids[:5])) == 5
    session.trim(9)
    assert session.common_prefix(list(ids)) == 9
    session.reset()
    assert session.common_prefix(list(ids)) == 0


@pytest.fixture(scope="module")
def tiny_int4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama exported to ONNX at int4 as a user would (4-bit MatMulNBits, int8 activations on the CPU)."""
    from edgegen.export import export_model
    from tests.fakes import tiny_llama

    root = tmp_path_factory.mktemp("tiny-int4")
    hf = tiny_llama(root / "hf", ["def add(a, b):\n    return a + b\n" * 40], vocab_size=300, layers=2,
                    hidden=64)  # heads of 16: ONNX Runtime's attention wants a multiple of 16
    return export_model(hf, root / "model", formats=["onnx"], weights="int4", group_size=32, quality_gate=False,
                        progress=False)


@pytest.mark.slow
def test_int4_one_row_steps_equal_multi_row_rows(tiny_int4: Path) -> None:
    # 4-bit MatMulNBits sums a lone row in another order than a row of several: AR's one-token steps must
    # still give bitwise the rows verification computes, or drafting strategies leave AR at int4.
    session = open_session(tiny_int4, read_manifest(tiny_int4), "onnxruntime")
    rng = np.random.default_rng(0)
    _assert_steps_equal_rows(session, rng.integers(3, 250, size=20), rng.integers(3, 250, size=12))
