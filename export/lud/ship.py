"""Shipping a LUD fine-tune: its delta is the placeholder ids' embedding rows (a few kB) and, for the "lora"
recipe, the LoRA A/B matrices (fp16, ~2.6 MB for rank 16 on 8 SmolLM2 layers), merged into the target.

`pack_lud` stores the rows (fp32) and adapters with the recipe and the target's facts; `merge_lud` writes the
target's HF folder with those rows replaced and every adapted linear layer merged by plain arithmetic
(W += scale * B @ A; no peft needed); `export_lud` exports that folder like any model (ONNX + OpenVINO) and
records the placeholder scheme in edgegen.json `extras["lud"]`, which the `lexical` strategy reads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.files import owned_tempdir

PACK_FORMAT = "edgegen-lud/1"  # placeholder rows only
PACK_FORMAT_LORA = "edgegen-lud/2"  # + LoRA adapters: tensors "lora/<module path>/A" (r, in) and ".../B" (out, r)
PACK_FORMATS = (PACK_FORMAT, PACK_FORMAT_LORA)
LORA_PACK_DTYPES = ("float16", "float32")
EXTRAS_KEY = "lud"
DEFAULT_THRESHOLD = 0.7  # confidence a placeholder's prediction needs to join the unit (docs/lud.md)


def pack_lud(checkpoint: str | Path, out_file: str | Path, dtype: str = "float16") -> Path:
    """Store the placeholder rows (fp32) and any LoRA adapters (`dtype`) of `checkpoint` (a ckpt-* folder, or a
    training folder: its latest) in `out_file` with the recipe and the target facts as metadata; atomic."""
    import torch
    from safetensors.torch import load_file

    from edgegen.export.checkpoints import checkpoint_dir
    from edgegen.export.lud.config import LORA_PREFIX

    if dtype not in LORA_PACK_DTYPES:
        raise EdgegenError(f"unsupported LUD pack dtype '{dtype}': {', '.join(LORA_PACK_DTYPES)}")
    ckpt = checkpoint_dir(Path(checkpoint), "LUD")
    meta = json.loads((ckpt / "meta.json").read_text())
    if "placeholder_ids" not in meta:
        raise EdgegenError(f"{ckpt} is not a LUD checkpoint (no placeholder ids in its meta.json)")
    saved = load_file(str(ckpt / "trainable.safetensors"))
    tensors = {"placeholder_embeds": saved["placeholder_embeds"].float().contiguous()}
    for name, t in saved.items():
        if name.startswith(LORA_PREFIX):  # "lora::model.layers.22.self_attn.q_proj.lora_A.default.weight"
            module, kind = name[len(LORA_PREFIX):].split(".lora_")
            tensors[f"lora/{module}/{kind[0]}"] = t.to(getattr(torch, dtype)).contiguous()
    lora = meta.get("lora")
    if (len(tensors) > 1) != (lora is not None):
        raise EdgegenError(f"{ckpt}: its LoRA tensors and its meta.json disagree")
    info = {"format": PACK_FORMAT_LORA if lora else PACK_FORMAT, "checkpoint": ckpt.name,
            "target_spec": meta.get("target_spec"), "placeholder_ids": meta["placeholder_ids"],
            "trainable": meta.get("trainable", "placeholders"), "recipe": meta["recipe"],
            "evals": meta.get("evals", [])[-1:], "tokens_seen": meta.get("tokens_seen"), **meta["target"],
            **({"lora": {**lora, "dtype": dtype}} if lora else {})}
    from edgegen.export.finetune import write_pack

    return write_pack(tensors, out_file, "edgegen_lud", info)


def _read(packed: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from edgegen.export.finetune import read_pack

    return read_pack(packed, "edgegen_lud", PACK_FORMATS, "packed LUD delta")


def read_packed_lud(packed: str | Path) -> tuple[Any, dict[str, Any]]:
    """(placeholder rows tensor (m, hidden), info) of a packed LUD delta."""
    tensors, info = _read(packed)
    return tensors["placeholder_embeds"], info


def read_packed_lora(packed: str | Path) -> dict[str, tuple[Any, Any]]:
    """{module path: (A (r, in), B (out, r)) as fp32} of a packed LUD delta ({} for a placeholder-only one)."""
    return _lora(_read(packed)[0])


def _lora(tensors: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    modules = sorted({k.split("/")[1] for k in tensors if k.startswith("lora/")})
    return {mod: (tensors[f"lora/{mod}/A"].float(), tensors[f"lora/{mod}/B"].float()) for mod in modules}


def merge_lora_(model: Any, lora: dict[str, tuple[Any, Any]], scale: float) -> None:
    """Merge LoRA adapters into `model`'s linear layers in place by plain arithmetic: W += scale * B @ A."""
    import torch

    with torch.no_grad():
        for mod, (A, B) in lora.items():
            try:
                W = model.get_submodule(mod).weight
            except AttributeError:
                raise EdgegenError(f"the LUD delta adapts {mod}, which the target does not have") from None
            if tuple(W.shape) != (B.shape[0], A.shape[1]):
                raise EdgegenError(f"the LUD adapter of {mod} is {B.shape[0]}x{A.shape[1]}; the target's layer is "
                                   f"{W.shape[0]}x{W.shape[1]}")
            W += (scale * (B.double() @ A.double())).to(W.dtype)


def merge_lud(packed: str | Path, target_hf_dir: str | Path, out_hf_dir: str | Path) -> Path:
    """The target's HF folder with the placeholder ids' embedding rows (and tied output rows) replaced."""
    import torch

    from edgegen.export.drafter.model import load_teacher
    from edgegen.export.drafter.ship import check_target_facts, save_hf_folder

    tensors, info = _read(packed)  # once: the rows and the adapters
    rows, lora = tensors["placeholder_embeds"], _lora(tensors)
    target_hf_dir = Path(target_hf_dir).expanduser()
    check_target_facts(info, target_hf_dir)  # same vocabulary and tokenizer, or the ids mean other tokens
    model = load_teacher(target_hf_dir)
    emb = model.get_input_embeddings().weight
    if rows.shape[1] != emb.shape[1]:
        raise EdgegenError(f"the LUD rows have width {rows.shape[1]}; the target's embedding has {emb.shape[1]}")
    with torch.no_grad():
        emb[torch.tensor(info["placeholder_ids"])] = rows.to(emb.dtype)
    if lora:
        merge_lora_(model, lora, float(info["lora"]["scale"]))
    return save_hf_folder(model, target_hf_dir, out_hf_dir)


def lud_extras(info: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `extras["lud"]`: the placeholder scheme the strategy needs, and where it came from."""
    lora = info.get("lora")
    return {"placeholder_ids": info["placeholder_ids"], "span": len(info["placeholder_ids"]),
            "trainable": info.get("trainable", "placeholders"),
            **({"lora": {k: lora[k] for k in ("rank", "alpha", "scale", "layers", "modules", "parameters", "dtype")
                         if k in lora}} if lora else {}),
            "delta_sha256": info.get("delta_sha256"),
            "layout": "P_j at the position of the unit's j-th token predicts its (j+1)-th; r's row predicts the 1st",
            "default_threshold": DEFAULT_THRESHOLD, "target_name": info["target_name"],
            "target_vocab_size": info["target_vocab_size"], "target_tokenizer_sha256": info["target_tokenizer_sha256"],
            "recipe": {**info["recipe"], "tokens_seen": info.get("tokens_seen"), "checkpoint": info.get("checkpoint"),
                       "evals": info.get("evals", [])}}


def export_lud(checkpoint: str | Path, out_dir: str | Path, *, target: str | None = None,
               cache_dir: str | Path | None = None, quality_gate: bool = True, progress: bool = True,
               formats: tuple[str, ...] = ("onnx", "openvino"), weights: str = "int8", sym: bool = True) -> Path:
    """Export a LUD fine-tune (packed file, ckpt-* folder or training folder) merged into its target: ONNX +
    OpenVINO (int8 symmetric by default, as `edgegen bench` exports the base), `extras["lud"]` in edgegen.json."""
    from edgegen.export.drafter.ship import export_rebuilt
    from edgegen.export.drafter.target import resolve_target
    from edgegen.export.pipeline import check_output_dir

    out = Path(out_dir).expanduser().resolve()
    check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    src = Path(checkpoint).expanduser()
    work = owned_tempdir(out, "lud")  # a killed export's is removed by the next (edgegen.files)
    try:
        packed = src if src.is_file() else pack_lud(src, work / "lud.safetensors")
        _, info = read_packed_lud(packed)
        info["delta_sha256"] = delta_sha256(packed)
        tinfo = resolve_target(target or info.get("target_spec") or "default", Path(cache_dir) if cache_dir else work)
        hf = merge_lud(packed, tinfo.hf_dir, work / f"{tinfo.name}-lud")
        export_rebuilt(hf, work, out, {EXTRAS_KEY: lud_extras(info)}, name=f"{tinfo.name}-lud", formats=formats,
                       weights=weights, sym=sym, quality_gate=quality_gate, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def delta_sha256(packed: str | Path) -> str:
    return hashlib.sha256(Path(packed).expanduser().read_bytes()).hexdigest()


def export_default_lud(delta: str | Path, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Rebuild the LUD-tuned default model from ``delta`` (the one shipped in edgegen/data; edgegen.artifacts
    caches the result) and export it to `out_dir`."""
    work = owned_tempdir(Path(out_dir).expanduser().resolve(), "lud-default")
    try:
        return export_lud(delta, out_dir, target="default", cache_dir=work, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
