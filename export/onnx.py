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
