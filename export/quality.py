"""Quality gate: perplexity of each exported graph against the fp32 torch model.

Every graph is scored by its own runtime (ONNX Runtime, OpenVINO) on the same fixed English paragraph,
so the gate measures what a user will actually run, not a torch simulation of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.manifest import GraphInfo

TEXT_ID = "edgegen-en-paragraph-v1"
# Plain expository English (~200 tokens): no code, no names a small model could not know, so the
# fp32 perplexity is low and stable and a quantization regression shows up as a clear ratio.
TEXT = (
    "The water cycle describes how water moves between the oceans, the air and the land. Heat from the "
    "sun warms the surface of lakes and seas, and some of the water turns into vapor and rises into the "
    "air. As the vapor climbs higher, it cools and condenses into tiny droplets that gather into clouds. "
    "When the droplets grow heavy enough, they fall back to the ground as rain or snow. Some of this "
    "water soaks into the soil and feeds plants and underground springs, while the rest flows over the "
    "land into streams and rivers. The rivers carry the water back to the sea, where the cycle begins "
    "again. Plants also return water to the air through their leaves, a process known as transpiration. "
    "In cold regions, water can stay frozen in glaciers and ice sheets for thousands of years before it "
    "melts and joins the cycle once more. Because the same water is used again and again, the amount of "
    "water on the planet stays almost the same over time. People depend on this cycle for drinking "
    "water, for growing food and for producing energy, so scientists study it closely to understand how "
    "a changing climate may affect the supply of fresh water in the years to come."
)

# Allowed perplexity ratio (graph / fp32 torch) per weight precision before the graph is flagged.
THRESHOLDS = {"fp32": 1.02, "fp16": 1.02, "int8": 1.02, "int4": 1.10}


def gate_token_ids(tokenizer_json: Path, bos_token_id: int | None, add_bos: bool) -> list[int]:
    """Token ids of TEXT as the runtime would build them (no template, BOS only if the model wants it)."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tokenizer_json)).encode(TEXT, add_special_tokens=False).ids
    if add_bos and bos_token_id is not None:
        ids = [bos_token_id, *ids]
    return ids


def perplexity_from_logits(logits: np.ndarray, ids: Sequence[int]) -> float:
    """exp(mean NLL) of ids[1:] given logits [n, vocab] computed at positions 0..n-1."""
    logits = np.asarray(logits, dtype=np.float64)[:-1]
    target = np.asarray(ids[1:])
    m = logits.max(axis=-1, keepdims=True)
    logz = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[:, 0]
    nll = logz - logits[np.arange(len(target)), target]
    return float(np.exp(nll.mean()))


def torch_perplexity(hf_dir: Path, ids: Sequence[int]) -> float:
    """Reference: the HF torch model in fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([list(ids)], dtype=torch.long))
    return perplexity_from_logits(out.logits[0].float().numpy(), ids)


def onnx_perplexity(model_folder: Path, graph: GraphInfo, ids: Sequence[int], kv_heads: int, head_dim: int) -> float:
    """One prefill of the whole text through ONNX Runtime with an empty KV cache."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model_folder / graph.path), so, providers=["CPUExecutionProvider"])
    n = len(ids)
    feeds: dict[str, Any] = {
        graph.inputs["input_ids"]: np.asarray([ids], dtype=np.int64),
        graph.inputs["attention_mask"]: np.ones((1, n), dtype=np.int64),
    }
    kv = graph.kv
    for inp in sess.get_inputs():
        if inp.name in feeds:
            continue
        # Past KV inputs: [batch, kv_heads, past_len, head_dim]. An empty past (length 0) is a valid
        # prefill for the GroupQueryAttention graph even though it is built for a shared buffer.
        # The builder leaves head_dim symbolic ("kv_cache_dim"), so take the sizes from the config.
        feeds[inp.name] = np.zeros((1, kv_heads, 0, head_dim), dtype=np.dtype(kv.dtype))
    (logits,) = sess.run([graph.logits], feeds)
    return perplexity_from_logits(logits[0], ids)


def openvino_perplexity(model_folder: Path, graph: GraphInfo, ids: Sequence[int]) -> float:
    """One prefill of the whole text through the stateful OpenVINO IR (fresh state)."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(model_folder / graph.path), "CPU")
    req = compiled.create_infer_request()
    req.reset_state()
    n = len(ids)
    names = {p.get_any_name() for p in compiled.inputs}
    feeds: dict[str, Any] = {
        graph.inputs["input_ids"]: np.asarray([ids], dtype=np.int64),
        graph.inputs["attention_mask"]: np.ones((1, n), dtype=np.int64),
    }
    if "position_ids" in graph.inputs and graph.inputs["position_ids"] in names:
        feeds[graph.inputs["position_ids"]] = np.arange(n, dtype=np.int64)[None]
    if "beam_idx" in graph.inputs and graph.inputs["beam_idx"] in names:
        feeds[graph.inputs["beam_idx"]] = np.zeros((1,), dtype=np.int32)
    res = req.infer(feeds)
    logits = res[compiled.output(graph.logits)]
    return perplexity_from_logits(logits[0], ids)


def graph_perplexity(model_folder: Path, graph: GraphInfo, ids: Sequence[int], kv_heads: int, head_dim: int) -> float:
    """Perplexity of TEXT through one exported graph, run by its own runtime."""
    if graph.format == "onnx":
        return onnx_perplexity(model_folder, graph, ids, kv_heads, head_dim)
    if graph.format == "openvino":
        return openvino_perplexity(model_folder, graph, ids)
    raise ValueError(f"no perplexity runner for format {graph.format!r}")


def gate_result(weights: str, ppl: float, ppl_fp32: float) -> dict[str, Any]:
    """The GraphInfo.quality record; flags a graph whose perplexity rose past its precision's limit."""
    ratio = ppl / ppl_fp32
    return {
        "ppl": round(ppl, 4),
        "ppl_fp32": round(ppl_fp32, 4),
        "ratio": round(ratio, 4),
        "flagged": bool(ratio > THRESHOLDS.get(weights, 1.10)),
        "text": TEXT_ID,
    }
