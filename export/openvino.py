"""OpenVINO export: optimum-intel builds a stateful fp32/fp16 IR, then NNCF compresses its weights.

Compression is done here rather than through optimum-intel's quantization config so that edgegen's
--sym/--group-size map one-to-one onto NNCF and the stage can be timed and reported on its own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.export.families import openvino_export_configs
from edgegen.export.progress import warn
from edgegen.manifest import GraphInfo, KVCacheLayout

OV_SUBDIR = "openvino"
OV_MODEL = "openvino_model.xml"
OV_EMBEDS_MODEL = "openvino_embeds_model.xml"  # the inputs_embeds graph (superposed decoding), built on request
TOKENIZER_IRS = ("openvino_tokenizer.xml", "openvino_detokenizer.xml")
_ROLES = ("input_ids", "inputs_embeds", "attention_mask", "position_ids", "beam_idx")


def build_openvino_ir(hf_dir: Path, model_folder: Path, *, weights: str) -> Path:
    """Export the stateful IR (fp16 only for weights=fp16; fp32 otherwise, compressed afterwards)."""
    if weights not in ("fp32", "fp16", "int8", "int4"):
        raise EdgegenError(f"unsupported OpenVINO weight precision '{weights}' (fp32, fp16, int8, int4)")
    out = model_folder / OV_SUBDIR
    try:
        from optimum.exporters.openvino import main_export
        from optimum.intel.openvino.configuration import OVConfig
    except Exception as e:
        raise EdgegenError(f"optimum-intel cannot be imported: {e}") from None
    # An explicit float dtype keeps optimum-intel from applying its own default compression.
    dtype = "fp16" if weights == "fp16" else "fp32"
    try:
        with openvino_export_configs(_model_type(hf_dir)):
            main_export(
                model_name_or_path=str(hf_dir),
                output=str(out),
                task="text-generation-with-past",
                ov_config=OVConfig(dtype=dtype),
                stateful=True,
                convert_tokenizer=True,
                library_name="transformers",
            )
    except Exception as e:
        raise EdgegenError(f"optimum-intel cannot export this model to OpenVINO: {type(e).__name__}: {e}") from None
    if not (out / OV_MODEL).is_file():
        raise EdgegenError(f"optimum-intel produced no {OV_MODEL} in {out}")
    missing = [n for n in TOKENIZER_IRS if not (out / n).is_file()]
    if missing:
        # The runtime tokenizes with tokenizer.json; only openvino-genai's speculative pipeline needs these.
        warn(f"OpenVINO tokenizer conversion failed ({', '.join(missing)} missing); the export is still usable")
    return out / OV_MODEL


def _model_type(hf_dir: Path) -> str:
    try:
        return str(json.loads((hf_dir / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError):
        return ""


def compress_openvino_weights(ir_path: Path, *, weights: str, sym: bool, group_size: int,
                              int4_share: float = 1.0, source: Path | None = None) -> int:
    """Compress the IR's weights in place with NNCF (int8 per-channel, int4 grouped); returns the group size used.

    int8 in NNCF is per-channel only, so its group size is always -1. int4 layers whose input size is not
    a multiple of the group (SmolLM2's 576) get the largest power-of-two group that divides it; ``int4_share``
    of the weights go to int4 (NNCF's ratio, by its data-free criterion), the rest, embeddings and the LM head
    to int8 (export/int4.py). source: an uncompressed IR to read instead of ``ir_path`` (a second compression).
    """
    if weights not in ("int8", "int4"):
        return 0
    try:
        import nncf
        import openvino as ov
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode
    except Exception as e:
        raise EdgegenError(f"NNCF cannot be imported: {e}") from None
    mode_name = f"{weights.upper()}_{'SYM' if sym else 'ASYM'}"
    mode = nncf.CompressWeightsMode[mode_name]
    kwargs: dict[str, object] = {"mode": mode, "ratio": int4_share if weights == "int4" else 1.0}
    used_group = -1
    if weights == "int4":
        used_group = group_size
        kwargs["group_size"] = group_size
        kwargs["advanced_parameters"] = AdvancedCompressionParameters(
            group_size_fallback_mode=GroupSizeFallbackMode.ADJUST
        )
    core = ov.Core()
    model = core.read_model(str(source or ir_path))
    try:
        compressed = nncf.compress_weights(model, **kwargs)
    except Exception as e:
        raise EdgegenError(f"NNCF weight compression ({mode_name}) failed: {type(e).__name__}: {e}") from None
    # The .bin is memory-mapped by read_model: write beside it, then swap the files.
    tmp = ir_path.with_name("compressed_" + ir_path.name)
    ov.save_model(compressed, str(tmp), compress_to_fp16=False)
    del model, compressed
    for suffix in (".xml", ".bin"):
        shutil.move(str(tmp.with_suffix(suffix)), str(ir_path.with_suffix(suffix)))
    return used_group


def build_openvino_embeds_ir(ir_path: Path, out_path: Path, *, scale: float = 1.0) -> Path:
    """Save a copy of the stateful IR that takes ``inputs_embeds`` [batch, seq, hidden] float32 instead of input_ids.

    Graph surgery on the exported (and already compressed) IR, since optimum-intel only exports input_ids
    graphs: the token-embedding Gather's output is replaced by the new Parameter, and ShapeOf(input_ids),
    which feeds the batch size of the initial KV state, by the first two dimensions of ShapeOf(inputs_embeds).
    The state (KV cache) is untouched. inputs_embeds are scaled rows (see EmbeddingsInfo); where the model
    scales its embeddings after the lookup (Gemma), a Multiply by 1/scale in front undoes that.
    """
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    model = ov.Core().read_model(str(ir_path))
    params = model.get_parameters()
    found = [i for i, p in enumerate(params) if "input_ids" in p.output(0).get_names()]
    if not found:
        raise EdgegenError(f"OpenVINO IR {ir_path.name} has no input_ids input")
    index = found[0]
    lookups, shapes = [], []
    for target in params[index].output(0).get_target_inputs():
        node = target.get_node()
        kind = node.get_type_name()
        if kind == "ShapeOf":
            shapes.append(node)
        elif kind == "Convert":  # i64 ids -> i32 indices of the embedding Gather
            lookups += [(t.get_node(), t.get_index()) for t in node.output(0).get_target_inputs()]
        else:
            lookups.append((node, target.get_index()))
    if len(lookups) != 1 or lookups[0][0].get_type_name() != "Gather" or lookups[0][1] != 1:
        found_ops = sorted({n.get_type_name() for n, _ in lookups})
        raise EdgegenError(f"cannot find the token-embedding lookup in {ir_path.name} (input_ids feeds {found_ops})")
    gather = lookups[0][0]
    shape = gather.get_output_partial_shape(0)
    if shape.rank.get_length() != 3 or not shape[2].is_static:
        raise EdgegenError(f"unexpected token-embedding output shape {shape} in {ir_path.name}")
    embeds = ops.parameter(ov.PartialShape([-1, -1, shape[2].get_length()]), ov.Type.f32, name="inputs_embeds")
    x = embeds.output(0)
    if scale != 1.0:
        x = ops.multiply(x, ops.constant(np.float32(1.0 / scale))).output(0)
    if gather.get_output_element_type(0) != ov.Type.f32:
        x = ops.convert(x, gather.get_output_element_type(0)).output(0)
    gather.output(0).replace(x)
    for node in shapes:
        dims = ops.shape_of(embeds, output_type=node.get_output_element_type(0))
        node.output(0).replace(ops.slice(dims, np.array([0]), np.array([2]), np.array([1])).output(0))
    model.replace_parameter(index, embeds)
    # replace() and replace_parameter() carry the old tensor names over: name the input last.
    embeds.output(0).set_names({"inputs_embeds"})
    embeds.set_friendly_name("inputs_embeds")
    model.validate_nodes_and_infer_types()
    ov.save_model(model, str(out_path), compress_to_fp16=False)
    return out_path


def describe_openvino(model_folder: Path, ir_path: Path, *, weights: str, sym: bool, group_size: int) -> GraphInfo:
    """Read the IR's input/output names; KV lives in OpenVINO state, so there are no cache tensors."""
    import openvino as ov

    model = ov.Core().read_model(str(ir_path))
    names = {n for p in model.inputs for n in p.get_names()}
    inputs = {r: r for r in _ROLES if r in names}
    if "input_ids" not in inputs and "inputs_embeds" not in inputs:
        raise EdgegenError(f"OpenVINO IR {ir_path.name} has no input_ids input (inputs: {sorted(names)})")
    outputs = {n for p in model.outputs for n in p.get_names()}
    if "logits" not in outputs:
        raise EdgegenError(f"OpenVINO IR {ir_path.name} has no logits output")
    stateful = len(model.get_sinks()) > 0
    if not stateful:
        raise EdgegenError(f"OpenVINO IR {ir_path.name} is not stateful; edgegen needs the KV cache in state")
    return GraphInfo(
        format="openvino",
        path=str(ir_path.relative_to(model_folder)),
        weights=weights,
        inputs=inputs,
        logits="logits",
        kv=KVCacheLayout(stateful=True, shared_buffer=False),
        sym=sym if weights in ("int8", "int4") else False,
        group_size=group_size,
    )
