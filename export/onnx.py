"""ONNX export through onnxruntime-genai's model builder (GroupQueryAttention + MatMulNBits graphs),
then edgegen's graph edits (export/graph_edits.py)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.export.families import normalize_for_onnx_builder
from edgegen.export.graph_edits import EDITED_SUFFIX, edit_onnx
from edgegen.manifest import GraphInfo, KVCacheLayout

ONNX_SUBDIR = "onnx"
ONNX_EMBEDS_SUBDIR = "onnx-embeds"  # the inputs_embeds graph (superposed decoding), built on request
_ONNX_TO_NUMPY = {1: "float32", 10: "float16", 16: "bfloat16"}  # onnx.TensorProto element types
_BLOCK_SIZES = (16, 32, 64, 128, 256)  # what MatMulNBits accepts
_ACCURACY_LEVEL = 4  # MatMulNBits compute on int8 activations: the builder's CPU default


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
    if quantized:
        # The builder defaults to symmetric; edgegen's --sym defaults to asymmetric like NNCF, so be explicit.
        extra += [f"block_size={group_size}", f"is_symmetric={'true' if sym else 'false'}"]
        if weights == "int4" and not sym:
            # Builder 0.18 bug: a tied embedding quantized to asymmetric uint4 (GatherBlockQuantized) gives
            # a graph ONNX Runtime refuses to load (uint8 Reshape output where float is expected).
            # Untied, the embedding stays float and only the LM head MatMul is quantized.
            extra.append("shared_embeddings=false")
    _run_builder(hf_dir, out, weights, execution_provider, cache_dir, extra)
    if embeds:
        # The runtime tokenizes with the folder's tokenizer.json; the builder's copies only serve the
        # onnxruntime-genai baseline, which runs the normal graph.
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            (out / name).unlink(missing_ok=True)
    return _describe_and_edit(model_folder, subdir, weights=weights, sym=sym,
                              group_size=group_size if quantized else 0, execution_provider=execution_provider)


def requantize_onnx_int4(
    hf_dir: Path, model_folder: Path, *, share: float, sym: bool, group_size: int, execution_provider: str,
    cache_dir: Path, embeds: bool = False,
) -> GraphInfo:
    """Replace the int4 graph in ``model_folder/onnx`` (``onnx-embeds`` with ``embeds``) with one whose weights are
    ``share`` int4, the rest int8 (export/int4.py), quantized by ONNX Runtime's MatMulNBits quantizer (as the
    builder quantizes) from the builder's fp32 graph, built once into ``cache_dir`` (q, k and v as their own
    MatMuls, so each gets its own pick as NNCF gives them on OpenVINO; the LM head untied, at int8). The embedding
    lookup stays float, as in int8 graphs: the quantizer writes Gathers at 4 bits only, and a 4-bit lookup would
    no longer match the float table the input-embedding graph is fed from. The pick depends on the weights
    alone, so the embeddings graph gets the same one."""
    from edgegen.export.int4 import int8_weight_names

    subdir = ONNX_EMBEDS_SUBDIR if embeds else ONNX_SUBDIR
    fp32 = cache_dir / f"fp32-untied-{subdir}"
    if not (fp32 / "model.onnx").is_file():
        _run_builder(hf_dir, fp32, "fp32", execution_provider, cache_dir / "builder",
                     ["shared_embeddings=false", "disable_qkv_fusion=true"] + ["exclude_embeds=true"] * embeds)
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(fp32 / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    head, body = matmuls[-1], matmuls[:-1]  # the builder emits the LM head last
    weights = {n.name: numpy_helper.to_array(inits[n.input[1]]) for n in body}
    int8 = sorted(int8_weight_names(weights, share) | {head.name})
    del weights, inits
    common = {"block_size": group_size, "is_symmetric": sym, "accuracy_level": _ACCURACY_LEVEL,
              "op_types_to_quantize": ("MatMul",)}
    int4_pass = MatMulNBitsQuantizer(model, bits=4, nodes_to_exclude=int8, **common)
    int4_pass.process()
    int8_pass = MatMulNBitsQuantizer(int4_pass.model.model, bits=8, nodes_to_include=int8, **common)
    int8_pass.process()
    out = model_folder / subdir
    out.mkdir(exist_ok=True)
    for name in ("model.onnx", "model.onnx.data", "model" + EDITED_SUFFIX):
        (out / name).unlink(missing_ok=True)
    if not (out / "genai_config.json").is_file():  # an embeddings graph built this way from the start
        shutil.copy2(fp32 / "genai_config.json", out / "genai_config.json")
    onnx.save(int8_pass.model.model, str(out / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    info = _describe_and_edit(model_folder, subdir, weights="int4", sym=sym, group_size=group_size,
                              execution_provider=execution_provider)
    return replace(info, int4_share=share)


def _run_builder(hf_dir: Path, out: Path, weights: str, execution_provider: str, cache_dir: Path,
                 extra: list[str]) -> None:
    """onnxruntime-genai's model builder into ``out``, handed a normalised config, its logging kept quiet."""
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
        opts = parse_extra_options(None, str(hf_dir), str(out), weights, execution_provider, str(cache_dir), extra)
        normalize_for_onnx_builder(opts["hf_details"]["hf_config"])  # transformers 5 configs the builder misreads
        create_model(None, str(hf_dir), str(out), weights, execution_provider, str(cache_dir), **opts)
    except (NotImplementedError, ValueError) as e:
        raise EdgegenError(
            f"the ONNX builder cannot export this model ({weights}, {execution_provider}): {e}"
        ) from None
    finally:
        root.setLevel(root_state[0])
        root.handlers[:] = root_state[1]
    if not (out / "model.onnx").is_file():
        raise EdgegenError(f"the ONNX builder produced no model.onnx in {out}")


def _describe_and_edit(model_folder: Path, subdir: str, *, weights: str, sym: bool, group_size: int,
                       execution_provider: str) -> GraphInfo:
    info = describe_onnx(model_folder, weights=weights, sym=sym, group_size=group_size,
                         execution_provider=execution_provider, subdir=subdir)
    # edgegen runs an edited copy (row-consistent attention, last-row logits); the builder's graph stays as
    # built for onnxruntime-genai, the bench anchor.
    edited, edits = edit_onnx(model_folder / info.path, info.logits)
    return replace(info, path=str(edited.relative_to(model_folder)), edits=edits)


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
