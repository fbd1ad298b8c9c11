"""edgegen's int4 recipe (export/int4.py): mixed int4/int8 weights picked by NNCF's data-free criterion, the LM
head at int8, on both formats. The real Gemma 3 270M int4 export's gate is checked in tests/test_families.py
(marker real_gemma)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgegen.export.int4 import INT4_RATIO, int8_weight_names


def test_int8_pick_follows_nncf_data_free_order_and_ratio() -> None:
    rng = np.random.default_rng(0)
    smooth = rng.uniform(-1, 1, (64, 64)).astype(np.float32)  # small int8 error
    spiky = rng.uniform(-1, 1, (64, 64)).astype(np.float32)
    spiky[0, :] = 200.0 * np.sign(spiky[0, :])  # one outlier row per channel: large int8 error
    weights = {"small": 0.01 * smooth[:, :8], "smooth": smooth, "spiky": spiky}  # small: the smallest int8 error
    # NNCF scores 1 / int8 error and takes the lowest scores for int4 first (spiky, smooth, small), stopping at
    # the first weight that would bring the int4 share to the ratio.
    assert int8_weight_names(weights, 0.6) == {"smooth", "small"}
    assert int8_weight_names(weights, 0.99) == {"small"}
    assert int8_weight_names(weights, 0.0) == set(weights)
    assert int8_weight_names(weights, 1.01) == set()


@pytest.fixture(scope="module")
def tiny_int4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_families import _tiny_model

    from edgegen.export import export_model
    from edgegen.export.families import FAMILIES

    root = tmp_path_factory.mktemp("int4")
    (root / "hf").mkdir()
    _tiny_model(FAMILIES[0], root / "hf")  # a tiny random Llama (hidden 64, 2 layers, untied LM head)
    return export_model(root / "hf", root / "model", weights="int4", sym=True, group_size=32, progress=False)


def test_tiny_int4_onnx_graph_is_mixed_with_an_int8_lm_head(tiny_int4: Path) -> None:
    import onnx

    from edgegen.manifest import read_manifest

    graph = read_manifest(tiny_int4).graphs["onnx"]
    assert (graph.weights, graph.sym, graph.group_size) == ("int4", True, 32)
    model = onnx.load(str(tiny_int4 / "onnx" / "model.onnx"))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert not [n for n in model.graph.node if n.op_type == "MatMul" and "proj" in n.name]  # every weight quantized
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in nbits}
    size = {n.name: int(next(a.i for a in n.attribute if a.name == "K")) * int(next(a.i for a in n.attribute
                                                                                   if a.name == "N")) for n in nbits}
    assert bits.pop("/lm_head/MatMul_Q8") == 8
    int4 = sum(size[n] for n, b in bits.items() if b == 4)
    body = sum(size[n] for n in bits)
    assert 0 < int4 < INT4_RATIO * body and set(bits.values()) == {4, 8}
    assert "/model/layers.0/attn/k_proj/MatMul_Q8" in bits or "/model/layers.0/attn/k_proj/MatMul_Q4" in bits
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and "embed_tokens" in n.name]
    assert gathers  # the embedding stays a float Gather (the builder quantizes Gathers to 4 bits only)


def test_tiny_int4_openvino_ir_is_mixed_with_int8_embeddings_and_lm_head(tiny_int4: Path) -> None:
    import openvino as ov

    model = ov.Core().read_model(str(tiny_int4 / "openvino" / "openvino_model.xml"))
    weights = {op.get_friendly_name(): op.get_element_type() for op in model.get_ops()
               if op.get_type_name() == "Constant" and op.get_element_type() in (ov.Type.u4, ov.Type.i4, ov.Type.u8,
                                                                                  ov.Type.i8)
               and len(op.get_output_shape(0)) >= 2}
    for name in ("self.model.embed_tokens.weight", "self.lm_head.weight"):
        assert weights[name] in (ov.Type.u8, ov.Type.i8), name
    kinds = set(weights.values())
    assert kinds & {ov.Type.u4, ov.Type.i4} and kinds & {ov.Type.u8, ov.Type.i8}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_tiny_int4_export_is_gated_and_runs(tiny_int4: Path, backend: str) -> None:
    import edgegen
    from edgegen.manifest import read_manifest

    for graph in read_manifest(tiny_int4).graphs.values():  # the gate scored it (a random model: no limit here)
        assert graph.quality["ppl"] > 0 and np.isfinite(graph.quality["ratio"]), graph.quality
    gen = edgegen.load(tiny_int4, backend=backend)
    ar = gen.generate("def add", max_new_tokens=8, chat=False, strategy="ar", ignore_eos=True)
    assert len(ar.token_ids) == 8
    lookup = gen.generate("def add", max_new_tokens=8, chat=False, strategy="prompt-lookup", ignore_eos=True)
    assert lookup.token_ids == ar.token_ids
