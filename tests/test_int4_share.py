"""int4 within the quality gate (export/int4.py): a graph the gate flags is re-quantized with part of its weights at
int8, picked by NNCF's data-free criterion, on both formats. The real Gemma 3 270M int4 export is checked in
tests/test_families.py (marker real_gemma)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgegen.export.int4 import INT4_SHARES, int8_weight_names
from tests.test_families import STRATEGIES


def test_int8_pick_follows_nncf_data_free_order_and_share() -> None:
    rng = np.random.default_rng(0)
    smooth = rng.uniform(-1, 1, (64, 64)).astype(np.float32)  # small int8 error
    spiky = rng.uniform(-1, 1, (64, 64)).astype(np.float32)
    spiky[0, :] = 200.0 * np.sign(spiky[0, :])  # one outlier row per channel: large int8 error
    weights = {"small": 0.01 * smooth[:, :8], "smooth": smooth, "spiky": spiky}  # small: the smallest int8 error
    # NNCF scores 1 / int8 error and takes the lowest scores for int4 first (spiky, smooth, small), stopping at
    # the first weight that would bring the int4 share to the limit.
    assert int8_weight_names(weights, 0.6) == {"smooth", "small"}
    assert int8_weight_names(weights, 0.99) == {"small"}
    assert int8_weight_names(weights, 0.0) == set(weights)
    assert int8_weight_names(weights, 1.01) == set()


@pytest.fixture(scope="module")
def strict_int4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama exported at int4 under a gate no graph passes (limit x0; a random model's int4 perplexity
    can be below its fp32 one): every share is tried."""
    from edgegen.export import export_model, quality
    from tests.fakes import tiny_llama

    root = tmp_path_factory.mktemp("int4-share")
    hf = tiny_llama(root / "hf", ["def add(a, b):\n    return a + b\n" * 40], vocab_size=300, layers=2, hidden=64)
    limits = dict(quality.THRESHOLDS)
    quality.THRESHOLDS["int4"] = 0.0
    try:
        return export_model(hf, root / "model", weights="int4", sym=True, group_size=32, progress=False,
                            embeddings=True)
    finally:
        quality.THRESHOLDS.update(limits)


@pytest.mark.slow
def test_a_flagged_int4_graph_is_requantized_with_int8_weights(strict_int4: Path) -> None:
    import onnx
    import openvino as ov

    from edgegen.manifest import read_manifest

    manifest = read_manifest(strict_int4)
    for graph in [*manifest.graphs.values(), *manifest.embeddings.graphs.values()]:
        assert (graph.weights, graph.int4_share) == ("int4", INT4_SHARES[-1]), graph.path
    assert all(g.quality["flagged"] for g in manifest.graphs.values())  # the gate's record of the last share
    for sub in ("onnx", "onnx-embeds"):
        nodes = onnx.load(str(strict_int4 / sub / "model.onnx"), load_external_data=False).graph.node
        assert not [n for n in nodes if n.op_type == "MatMul" and "proj" in n.name]  # every weight quantized
        bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in nodes if n.op_type == "MatMulNBits"}
        assert set(bits.values()) == {4, 8}, sub
        if sub == "onnx":
            assert bits["/lm_head/MatMul_Q8"] == 8
            assert [n for n in nodes if n.op_type == "Gather" and "embed_tokens" in n.name]  # a float lookup
    model = ov.Core().read_model(str(strict_int4 / manifest.graphs["openvino"].path))
    kinds = {op.get_element_type() for op in model.get_ops()
             if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) >= 2}
    assert kinds & {ov.Type.u4, ov.Type.i4} and kinds & {ov.Type.u8, ov.Type.i8}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_requantized_int4_strategies_equal_ar(strict_int4: Path, backend: str) -> None:
    import edgegen

    gen = edgegen.load(strict_int4, backend=backend, draft=strict_int4)  # the model drafts for itself
    ar = gen.generate("def add", max_new_tokens=24, chat=False, strategy="ar", ignore_eos=True)
    assert len(ar.token_ids) == 24
    for strategy, options in STRATEGIES:
        out = gen.generate("def add", max_new_tokens=24, chat=False, strategy=strategy, ignore_eos=True, **options)
        assert out.token_ids == ar.token_ids, strategy
