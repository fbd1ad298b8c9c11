"""Quality gate: perplexity of each exported graph against the fp32 torch model.

Every graph is scored by the session a user gets for it (edgegen.runtimes: ONNX Runtime, OpenVINO) on the same
fixed English paragraph, so the gate measures what a user will actually run, not a torch simulation of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.manifest import Manifest

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


def gate_token_ids(tokenizer_json: Path, bos_token_id: int | None, add_bos: bool,
                   context_length: int = 0) -> list[int]:
    """Token ids of TEXT as the runtime would build them (no template, BOS only if the model wants it).

    context_length: the model's (0: unknown); the ids are cut to what one session can hold (one slot short of
    it: a session may keep a spare slot), so a model with a short context is gated on the text's start.
    """
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tokenizer_json)).encode(TEXT, add_special_tokens=False).ids
    if add_bos and bos_token_id is not None:
        ids = [bos_token_id, *ids]
    return ids[: context_length - 1] if context_length > 1 else ids


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


def graph_perplexity(model_folder: Path, manifest: Manifest, fmt: str, ids: Sequence[int]) -> float:
    """Perplexity of ``ids`` through the ``fmt`` graph of ``manifest``: one prefill on CPU through the session
    a user gets (edgegen.runtimes), fresh cache."""
    from edgegen.runtimes import backend_for, open_session

    session = open_session(model_folder, manifest, backend_for(fmt), device="CPU")
    return perplexity_from_logits(session.forward(np.asarray(ids, dtype=np.int64)), ids)


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
