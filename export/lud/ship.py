"""Shipping a LUD fine-tune: its delta is the placeholder ids' embedding rows (a few kB), merged into the target.

`pack_lud` stores the rows (fp32 safetensors) with the recipe and the target's facts; `merge_lud` writes the
target's HF folder with those rows replaced; `export_lud` exports that folder like any model (ONNX + OpenVINO)
and records the placeholder scheme in edgegen.json `extras["lud"]`, which the `lexical` strategy reads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError

PACK_FORMAT = "edgegen-lud/1"
EXTRAS_KEY = "lud"
DEFAULT_THRESHOLD = 0.7  # confidence a placeholder's prediction needs to join the unit (docs/lud.md)


def _checkpoint_dir(path: Path) -> Path:
    from edgegen.export.drafter.ckpt import latest_checkpoint

    path = Path(path).expanduser()
    if (path / "meta.json").is_file() and (path / "trainable.safetensors").is_file():
        return path
    if path.is_dir() and (found := latest_checkpoint(path)) is not None:
        return found
    raise EdgegenError(f"{path} is not a LUD checkpoint or training folder (no complete ckpt-* inside)")


def pack_lud(checkpoint: str | Path, out_file: str | Path) -> Path:
    """Store the placeholder rows of `checkpoint` (a ckpt-* folder, or a training folder: its latest) in
    `out_file` with the recipe and the target facts as metadata; written atomically."""
    from safetensors.torch import load_file, save_file

    ckpt = _checkpoint_dir(Path(checkpoint))
    meta = json.loads((ckpt / "meta.json").read_text())
    if "placeholder_ids" not in meta:
        raise EdgegenError(f"{ckpt} is not a LUD checkpoint (no placeholder ids in its meta.json)")
    rows = load_file(str(ckpt / "trainable.safetensors"))["placeholder_embeds"].float().contiguous()
    info = {"format": PACK_FORMAT, "checkpoint": ckpt.name, "target_spec": meta.get("target_spec"),
            "placeholder_ids": meta["placeholder_ids"], "recipe": meta["recipe"],
            "evals": meta.get("evals", [])[-1:], "tokens_seen": meta.get("tokens_seen"), **meta["target"]}
    out_file = Path(out_file).expanduser().resolve()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    save_file({"placeholder_embeds": rows}, str(tmp), metadata={"edgegen_lud": json.dumps(info, sort_keys=True)})
    os.replace(tmp, out_file)
    return out_file


def read_packed_lud(packed: str | Path) -> tuple[Any, dict[str, Any]]:
    """(placeholder rows tensor (m, hidden), info) of a packed LUD delta."""
    from safetensors import safe_open

    packed = Path(packed).expanduser()
    if not packed.is_file():
        raise EdgegenError(f"packed LUD delta not found: {packed}")
    try:
        with safe_open(str(packed), framework="pt") as f:
            info = json.loads((f.metadata() or {})["edgegen_lud"])
            rows = f.get_tensor("placeholder_embeds")
    except Exception as e:  # safetensors raises its own error types
        raise EdgegenError(f"{packed} is not a packed LUD delta: {e}") from None
    if info.get("format") != PACK_FORMAT:
        raise EdgegenError(f"{packed} has LUD format {info.get('format')!r}; this edgegen reads {PACK_FORMAT}")
    return rows, info


def merge_lud(packed: str | Path, target_hf_dir: str | Path, out_hf_dir: str | Path) -> Path:
    """The target's HF folder with the placeholder ids' embedding rows (and tied output rows) replaced."""
    import torch

    from edgegen.export.drafter.model import load_teacher
    from edgegen.export.drafter.ship import check_target_facts, save_hf_folder

    rows, info = read_packed_lud(packed)
    target_hf_dir = Path(target_hf_dir).expanduser()
    check_target_facts(info, target_hf_dir)  # same vocabulary and tokenizer, or the ids mean other tokens
    model = load_teacher(target_hf_dir)
    emb = model.get_input_embeddings().weight
    if rows.shape[1] != emb.shape[1]:
        raise EdgegenError(f"the LUD rows have width {rows.shape[1]}; the target's embedding has {emb.shape[1]}")
    with torch.no_grad():
        emb[torch.tensor(info["placeholder_ids"])] = rows.to(emb.dtype)
    return save_hf_folder(model, target_hf_dir, out_hf_dir)


def lud_extras(info: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `extras["lud"]`: the placeholder scheme the strategy needs, and where it came from."""
    return {"placeholder_ids": info["placeholder_ids"], "span": len(info["placeholder_ids"]),
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
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.lud-", dir=out.parent))
    try:
        packed = src if src.is_file() else pack_lud(src, work / "lud.safetensors")
        _, info = read_packed_lud(packed)
        tinfo = resolve_target(target or info.get("target_spec") or "default", Path(cache_dir) if cache_dir else work)
        hf = merge_lud(packed, tinfo.hf_dir, work / f"{tinfo.name}-lud")
        export_rebuilt(hf, work, out, {EXTRAS_KEY: lud_extras(info)}, name=f"{tinfo.name}-lud", formats=formats,
                       weights=weights, sym=sym, quality_gate=quality_gate, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def shipped_delta() -> Path:
    """The LUD delta of the default model that ships inside the package (edgegen/data)."""
    from importlib import resources

    path = Path(str(resources.files("edgegen").joinpath("data", "lud-smollm2-135m.safetensors")))
    if not path.is_file():
        raise EdgegenError(f"this edgegen install lacks the default model's LUD delta ({path})")
    return path


def export_default_lud(out_dir: str | Path, *, progress: bool = True) -> Path:
    """Rebuild the LUD-tuned default model from the shipped delta and export it to `out_dir` (once; cached)."""
    work = Path(tempfile.mkdtemp(prefix=".lud-default-"))
    try:
        return export_lud(shipped_delta(), out_dir, target="default", cache_dir=work, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
