"""The Core Ultra NPU profile: static shapes and symmetric int4, run through NPUW on the CPU.

OpenVINO's NPUW can place the NPU graph's pieces on the CPU (NPUW_DEVICES=CPU), which exercises the
same compile path, static-shape limits and stateful decode as a real NPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import edgegen
from edgegen.errors import EdgegenError
from edgegen.manifest import read_manifest
from edgegen.runtimes.openvino_session import NPUW_ENV


@pytest.fixture(scope="module")
def npu_model(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgegen.export import export_model

    return export_model(hf_dir, tmp_path_factory.mktemp("npu") / "model", profile="core-ultra-npu",
                        progress=False)


def test_npu_export_is_symmetric_int4_with_static_shapes(npu_model: Path) -> None:
    manifest = read_manifest(npu_model)
    graph = manifest.graph("openvino")
    assert (graph.weights, graph.sym, graph.group_size) == ("int4", True, 128)
    assert manifest.profile == "core-ultra-npu"
    assert manifest.static_shapes == {"max_prompt_len": 1024, "min_response_len": 128}
    assert "onnx" not in manifest.graphs


def test_npu_path_generates_like_the_cpu_plugin(npu_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NPUW_ENV, "CPU")
    npu = edgegen.load(npu_model, device="NPU")
    assert npu.session.device == "NPU" and npu.session.max_length == 1024 + 128
    got = npu.generate("def fibonacci(n):", max_new_tokens=16, chat=False)
    cpu = edgegen.load(npu_model, backend="openvino", device="CPU", profile="cpu")
    want = cpu.generate("def fibonacci(n):", max_new_tokens=16, chat=False)
    assert len(got.token_ids) == 16
    assert got.stats.strategy == "ar"  # the default strategy does not draft on a one-token-per-call graph
    assert got.token_ids[:4] == want.token_ids[:4]  # same IR and weights: the completion starts alike
    with pytest.raises(EdgegenError, match="exceeds"):
        npu.generate("hello", max_new_tokens=2000)


def test_npu_absent_without_npuw(npu_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NPUW_ENV, raising=False)
    with pytest.raises(EdgegenError, match="not present"):
        edgegen.load(npu_model, device="NPU")
