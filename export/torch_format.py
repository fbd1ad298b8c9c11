"""The ``torch`` format: the Hugging Face model itself (config + safetensors), for the torch backend
(runtimes/torch_session.py). No graph is built: the weights are saved at the asked precision."""

from __future__ import annotations

from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.manifest import GraphInfo, KVCacheLayout

FORMAT = "torch"
FOLDER = "torch"  # inside the export: config.json, generation_config.json, model*.safetensors
WEIGHTS = {"fp32": "float32", "fp16": "float16"}  # precision -> torch dtype of the saved weights


def check_weights(weights: str) -> None:
    """The torch format holds the model unquantized: refuse int8/int4 before any work."""
    if weights not in WEIGHTS:
        raise EdgegenError(f"the torch format holds fp32 or fp16 weights, not {weights}: pass --weights fp32 or fp16")


def build_torch(hf_dir: Path, folder: Path, weights: str) -> GraphInfo:
    """Save ``hf_dir``'s model into ``folder/torch`` at ``weights`` precision (safetensors) and describe it."""
    import torch
    from transformers import AutoModelForCausalLM

    check_weights(weights)
    dtype = getattr(torch, WEIGHTS[weights])
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype)
    model.save_pretrained(str(folder / FOLDER))
    return GraphInfo(format=FORMAT, path=f"{FOLDER}/config.json", weights=weights,
                     inputs={"input_ids": "input_ids", "inputs_embeds": "inputs_embeds"}, logits="logits",
                     kv=KVCacheLayout(stateful=False, shared_buffer=True, dtype=WEIGHTS[weights]), group_size=0)
