"""ONNX export through onnxruntime-genai's model builder (GroupQueryAttention + MatMulNBits graphs),
then edgegen's graph edits (export/graph_edits.py)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.export.families import normalize_for_onnx_builder
from edgegen.export.graph_edits import edit_onnx
from edgegen.manifest import GraphInfo, KVCacheLayout

ONNX_SUBDIR = "onnx"
ONNX_EMBEDS_SUBDIR = "onnx-embeds"  # the inputs_embeds graph (superposed decoding), built on request
_ONNX_TO_NUMPY = {1: "float32", 10: "float16", 16: "bfloat16"}  # onnx.TensorProto element types
_BLOCK_SIZES = (16, 32, 64, 128, 256)  # what MatMulNBits accepts
_INT4_ACCURACY_LEVEL = 4  # MatMulNBits compute: int8 activations on CPU, the builder's CPU default


def build_onnx(
    hf_dir: Path,
    model_folder: Path,
    *,
    weights: str,
    sym: bool,
    group_size: int,
    execution_provider: str = "cpu",
    cache_dir: Path,
    embeds: bool = False,
) -> GraphInfo:
    """Build `model_folder/onnx/model.onnx` from an HF folder and describe it as a GraphInfo.

    embeds: build the input-embedding graph instead (`onnx-embeds/`, the builder's exclude_embeds:
    input ``inputs_embeds`` [batch, seq, hidden], no embedding lookup and no embedding scale, the
    same shared-buffer KV cache).
    """
    if weights not in ("fp32", "fp16", "int8", "int4"):
        raise EdgegenError(f"unsupported ONNX weight precision '{weights}' (fp32, fp16, int8, int4)")
    quantized = weights in ("int8", "int4")
    if quantized and group_size not in _BLOCK_SIZES:
        raise EdgegenError(
            f"ONNX {weights} needs a group size of {', '.join(map(str, _BLOCK_SIZES))} (MatMulNBits blocks); "
            f"got {group_size}"
        )
    subdir = ONNX_EMBEDS_SUBDIR if embeds else ONNX_SUBDIR
    out = model_folder / subdir
    extra = ["exclude_embeds=true"] if embeds else []
    # int4 is edgegen's mixed int4/int8 recipe (export/int4.py): the builder writes the fp32 graph with an untied
    # LM head (its own MatMul weight; the embedding stays float), then _quantize_int4 picks and quantizes.
    builder_weights = "fp32" if weights == "int4" else weights
    if weights == "int8":
        # The builder defaults to symmetric; edgegen's --sym defaults to asymmetric like NNCF, so be explicit.
        extra += [f"block_size={group_size}", f"is_symmetric={'true' if sym else 'false'}"]
    elif weights == "int4":
        # q, k and v as their own MatMuls, so each gets its own int4/int8 pick as NNCF gives them on OpenVINO
        # (k and v are small and sensitive; a fused qkv goes to int4 or int8 as a whole).
        extra += ["shared_embeddings=false", "disable_qkv_fusion=true"]
    root = logging.getLogger()
    root_state = (root.level, list(root.handlers))
    try:
        from onnxruntime_genai.models.builder import create_model, parse_extra_options

        # Importing the MatMulNBits quantizer runs logging.basicConfig(level=INFO) and it then logs
        # every node (plus a spurious "Gather only supports 4 bits" ERROR for the tied embedding).
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.CRITICAL)
    except Exception as e:
        raise EdgegenError(f"the ONNX model builder (onnxruntime-genai) cannot be imported: {e}") from None
    try:
        opts = parse_extra_options(None, str(hf_dir), str(out), builder_weights, execution_provider, str(cache_dir),
                                   extra)
        normalize_for_onnx_builder(opts["hf_details"]["hf_config"])  # transformers 5 configs the builder misreads
        create_model(None, str(hf_dir), str(out), builder_weights, execution_provider, str(cache_dir), **opts)
    except (NotImplementedError, ValueError) as e:
        raise EdgegenError(
            f"the ONNX builder cannot export this model ({weights}, {execution_provider}): {e}"
        ) from None
    finally:
        root.setLevel(root_state[0])
        root.handlers[:] = root_state[1]
    if not (out / "model.onnx").is_file():
        raise EdgegenError(f"the ONNX builder produced no model.onnx in {out}")
    if weights == "int4":
        _quantize_int4(out / "model.onnx", sym=sym, group_size=group_size)
    if embeds:
        # The runtime tokenizes with the folder's tokenizer.json; the builder's copies only serve the
        # onnxruntime-genai baseline, which runs the normal graph.
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            (out / name).unlink(missing_ok=True)
    info = describe_onnx(
        model_folder,
        weights=weights,
        sym=sym,
        group_size=group_size if quantized else 0,
        execution_provider=execution_provider,
        subdir=subdir,
    )
    # edgegen runs an edited copy (row-consistent attention, last-row logits); the builder's graph stays as
    # built for onnxruntime-genai, the bench anchor.
    edited, edits = edit_onnx(model_folder / info.path, info.logits)
    return replace(info, path=str(edited.relative_to(model_folder)), edits=edits)


def _quantize_int4(graph_path: Path, *, sym: bool, group_size: int) -> None:
    """Quantize the fp32 graph's MatMul weights in place to edgegen's int4 recipe (export/int4.py) with ONNX
    Runtime's MatMulNBits quantizer, as the builder does (its default MLAS quantizer, accuracy level 4 on CPU):
    an int4 pass over the chosen weights, then an int8 pass over the LM head and the rest."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from edgegen.export.int4 import int8_weight_names

    model = onnx.load(str(graph_path))
    inits = {i.name: i for i in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    if not matmuls:
        raise EdgegenError(f"the ONNX graph {graph_path.name} has no MatMul weights to quantize")
    head, body = matmuls[-1], matmuls[:-1]  # the builder emits the LM head last
    weights = {n.name: numpy_helper.to_array(inits[n.input[1]]) for n in body}
    int8 = sorted(int8_weight_names(weights) | {head.name})
    del weights, inits
    common = {"block_size": group_size, "is_symmetric": sym, "accuracy_level": _INT4_ACCURACY_LEVEL,
              "op_types_to_quantize": ("MatMul",)}
    int4_pass = MatMulNBitsQuantizer(model, bits=4, nodes_to_exclude=int8, **common)
    int4_pass.process()
    int8_pass = MatMulNBitsQuantizer(int4_pass.model.model, bits=8, nodes_to_include=int8, **common)
    int8_pass.process()
    data = graph_path.with_name(graph_path.name + ".data")
    tmp = graph_path.with_name("." + graph_path.name + ".tmp")
    data.unlink()  # the new graph writes its own data file under the same name
    onnx.save(int8_pass.model.model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
              location=data.name, size_threshold=1024)
    tmp.replace(graph_path)


def describe_onnx(
    model_folder: Path, *, weights: str, sym: bool, group_size: int, execution_provider: str,
    subdir: str = ONNX_SUBDIR,
) -> GraphInfo:
    """Read names and the KV dtype from the built graph and genai_config.json (never guessed)."""
    import onnx

    out = model_folder / subdir
    genai = json.loads((out / "genai_config.json").read_text())
    dec = genai["model"]["decoder"]
    graph = onnx.load(str(out / dec["filename"]), load_external_data=False).graph
    inputs = {i.name: i for i in graph.input}
    past_key = dec["inputs"]["past_key_names"]
    first_past = inputs.get(past_key % 0)
    if first_past is None:
        raise EdgegenError(f"built ONNX graph has no input {past_key % 0}")
    elem = first_past.type.tensor_type.elem_type
    kv = KVCacheLayout(
        stateful=False,
        shared_buffer=bool(genai.get("search", {}).get("past_present_share_buffer", False)),
        past_key=past_key,
        past_value=dec["inputs"]["past_value_names"],
        present_key=dec["outputs"]["present_key_names"],
        present_value=dec["outputs"]["present_value_names"],
        dtype=_ONNX_TO_NUMPY.get(elem, "float32"),
    )
    roles = {r: dec["inputs"][r] for r in ("input_ids", "inputs_embeds", "attention_mask", "position_ids")
             if r in dec["inputs"]}
    return GraphInfo(
        format="onnx",
        path=f"{subdir}/{dec['filename']}",
        weights=weights,
        inputs=roles,
        logits=dec["outputs"]["logits"],
        kv=kv,
        sym=sym if weights in ("int8", "int4") else False,
        group_size=group_size,
        execution_provider=execution_provider,
    )
