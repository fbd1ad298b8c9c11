"""Shipping a drafter: pack only its non-shared weights, rebuild it against the target, export it.

The embedding (and the tied head) is the target's own, so a packed drafter holds just the transformer
layers and the final norm plus its recipe: fp16 (~14 MB for 2 layers of SmolLM2-135M) or int8 in blocks of
32 with fp16 scales (~7.5 MB, what ships; the export quantizes to int8 anyway).
`unpack_drafter` rebuilds the full HF drafter folder from the target's weights and tokenizer, refusing a
target whose vocabulary or tokenizer differs from the one the drafter was trained for.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.export.pipeline import atomic_folder
from edgegen.files import owned_tempdir

PACK_FORMAT = "edgegen-drafter/1"
PACK_DTYPES = ("float16", "bfloat16", "float32", "int8")
INT8_BLOCK = 32  # weights per fp16 scale in an int8 pack
HEAD_VOCAB_KEY = "head_vocab"  # in a pack: the target ids a reduced drafter head keeps (int32, most frequent first)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                    "generation_config.json")


def shrink_vocab(model: Any, kept: Any) -> None:
    """Keep only the rows `kept` of a tied embedding/head model, in place (the config's vocab_size follows)."""
    import torch

    if not model.config.tie_word_embeddings:
        raise EdgegenError("a reduced drafter head needs tied embeddings (the head is the embedding's rows)")
    idx = torch.as_tensor(np.asarray(kept), dtype=torch.long)
    emb = model.get_input_embeddings()  # kept as it is: Gemma's scales its rows by sqrt(hidden)
    rows = emb.weight.detach()[idx].clone()
    emb.weight = torch.nn.Parameter(rows)
    emb.num_embeddings, emb.padding_idx = len(idx), None
    model.lm_head = torch.nn.Linear(rows.shape[1], len(idx), bias=False)
    model.config.vocab_size = len(idx)
    model.tie_weights()


def _encode(tensors: dict[str, Any], dtype: str) -> dict[str, Any]:
    import torch

    if dtype != "int8":
        return {k: v.to(getattr(torch, dtype)).contiguous() for k, v in tensors.items()}
    out = {}
    for k, v in tensors.items():
        if v.ndim != 2 or v.shape[1] % INT8_BLOCK:
            out[k] = v.to(torch.float16).contiguous()
            continue
        blocks = v.float().reshape(v.shape[0], -1, INT8_BLOCK)
        scale = (blocks.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-12).to(torch.float16)
        out[k + ".q8"] = torch.round(blocks / scale.float()).clamp(-127, 127).to(torch.int8).reshape(v.shape)
        out[k + ".scale"] = scale.squeeze(-1).contiguous()
    return out


def _decode(tensors: dict[str, Any]) -> dict[str, Any]:
    """float32 weights from any pack dtype (int8 blocks are dequantized)."""
    import torch

    out = {}
    for k, v in tensors.items():
        if k.endswith(".scale") or k == HEAD_VOCAB_KEY:
            continue
        if k.endswith(".q8"):
            scale = tensors[k[: -len(".q8")] + ".scale"].float()
            out[k[: -len(".q8")]] = (v.float().reshape(v.shape[0], -1, INT8_BLOCK) * scale[..., None]).reshape(v.shape)
        else:
            out[k] = v.to(torch.float32)
    return out


def read_packed(packed: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, info) of a packed drafter."""
    from edgegen.export.finetune import read_pack

    return read_pack(packed, "edgegen_drafter", (PACK_FORMAT,), "packed drafter")


def check_target_facts(info: dict[str, Any], target_hf_dir: Path) -> None:
    """Refuse a target whose vocabulary size or tokenizer differs from the drafter's."""
    from edgegen.export.drafter.target import _hf_vocab, file_sha256

    vocab = _hf_vocab(Path(target_hf_dir))
    if vocab != info["target_vocab_size"]:
        raise EdgegenError(f"drafter was trained for a vocabulary of {info['target_vocab_size']} tokens "
                           f"({info.get('target_name')}); the target has {vocab}")
    sha = file_sha256(Path(target_hf_dir) / "tokenizer.json")
    if sha != info["target_tokenizer_sha256"]:
        raise EdgegenError(f"drafter was trained with another tokenizer than {target_hf_dir}'s "
                           f"(sha256 {info['target_tokenizer_sha256'][:12]} vs {sha[:12]})")


def unpack_drafter(packed: str | Path, target_hf_dir: str | Path, out_hf_dir: str | Path) -> Path:
    """Rebuild the full HF drafter folder: the target's embedding/head + the packed layers and norm."""
    from edgegen.export.drafter.model import build_student, load_teacher, load_trainable

    tensors, info = read_packed(packed)
    target_hf_dir = Path(target_hf_dir).expanduser()
    check_target_facts(info, target_hf_dir)
    recipe = info["recipe"]
    teacher = load_teacher(target_hf_dir)
    student, mapping = build_student(teacher, recipe["layers"], recipe["init"], recipe.get("train_embedding", False))
    if mapping != info["layer_map"]:
        raise EdgegenError(f"the target has another depth than the drafter's ({mapping} vs {info['layer_map']})")
    load_trainable(student, _decode(tensors))
    if HEAD_VOCAB_KEY in tensors:
        shrink_vocab(student, tensors[HEAD_VOCAB_KEY].numpy())
    student.eval()
    return save_hf_folder(student, target_hf_dir, out_hf_dir)


def save_hf_folder(model: Any, target_hf_dir: Path, out_hf_dir: str | Path) -> Path:
    """Write ``model`` as an HF folder with the target's tokenizer files, atomically (temp folder + rename)."""
    out = Path(out_hf_dir).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out, check=False) as tmp:
        model.save_pretrained(str(tmp))
        for name in _TOKENIZER_FILES:
            if (target_hf_dir / name).is_file():
                shutil.copy2(target_hf_dir / name, tmp / name)
    return out


def drafter_extras(info: dict[str, Any]) -> dict[str, Any]:
    return {"target_name": info["target_name"], "target_vocab_size": info["target_vocab_size"],
            "target_tokenizer_sha256": info["target_tokenizer_sha256"],
            "recipe": {**info["recipe"], "layer_map": info["layer_map"], "tokens_seen": info.get("tokens_seen"),
                       "packed_dtype": info["dtype"], "evals": info.get("evals", [])}}


def export_drafter(checkpoint: str | Path, out_dir: str | Path, *, target: str | None = None,
                   cache_dir: str | Path | None = None, quality_gate: bool = True, progress: bool = True,
                   formats: tuple[str, ...] = ("onnx", "openvino"), weights: str = "int8", sym: bool = True) -> Path:
    """Export a packed drafter (``export_trained`` takes a training folder) like a target: ONNX + OpenVINO int8
    symmetric, with `extras["drafter"]` in edgegen.json. `target` defaults to the one it was trained for."""
    from edgegen.export.drafter.target import resolve_target
    from edgegen.export.pipeline import check_output_dir

    out = Path(out_dir).expanduser().resolve()
    check_output_dir(out)
    src = Path(checkpoint).expanduser()
    work = owned_tempdir(out, "drafter")  # a killed export's is removed by the next (edgegen.files)
    try:
        if not src.is_file():
            raise EdgegenError(f"{src} is not a packed drafter (a training folder: pack.export_trained)")
        packed = src
        tensors, info = read_packed(packed)
        spec = target or info.get("target_spec") or "default"
        tinfo = resolve_target(spec, Path(cache_dir) if cache_dir else work)
        name = f"{tinfo.name}-drafter-{info['recipe']['layers']}L"
        hf = unpack_drafter(packed, tinfo.hf_dir, work / name)
        extras = drafter_extras(info)
        if HEAD_VOCAB_KEY in tensors:  # the graph's token i is the target's token head_vocab[i]
            extras["head_vocab"] = tensors[HEAD_VOCAB_KEY].tolist()
            quality_gate = False  # the gate scores text through the target's ids, which this graph renumbers
        export_rebuilt(hf, work, out, {"drafter": extras}, formats=formats, weights=weights, sym=sym,
                       quality_gate=quality_gate, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def export_rebuilt(hf: Path, work: Path, out: Path, extras: dict[str, Any], name: str | None = None,
                   **export_options: Any) -> Path:
    """Export a rebuilt HF folder (drafter, LUD-tuned target) through the target pipeline into ``work``,
    record ``extras`` (and ``name``) in its manifest, then move it to ``out`` in one rename."""
    from edgegen.export.pipeline import export_model
    from edgegen.files import check_output_dir, publish_folder
    from edgegen.manifest import read_manifest

    staged = export_model(hf, work / "model", **export_options)
    manifest = read_manifest(staged)
    manifest = replace(manifest, name=name or manifest.name, extras={**manifest.extras, **extras})
    tmp_json = staged / "edgegen.json.tmp"
    tmp_json.write_text(manifest.to_json() + "\n")
    os.replace(tmp_json, staged / "edgegen.json")
    check_output_dir(out)
    publish_folder(staged, out)
    return out


def check_drafter_compat(drafter: Any, target: Any) -> None:
    """Refuse a drafter (model folder or Manifest) that was not trained for `target` (folder or Manifest)."""
    from edgegen.export.drafter.target import file_sha256
    from edgegen.manifest import Manifest, read_manifest

    d = drafter if isinstance(drafter, Manifest) else read_manifest(drafter)
    t = target if isinstance(target, Manifest) else read_manifest(target)
    facts = d.extras.get("drafter")
    if not isinstance(facts, dict):
        raise EdgegenError(f"model '{d.name}' is not a drafter (no extras.drafter in its manifest)")
    own_vocab = len(facts["head_vocab"]) if facts.get("head_vocab") else t.vocab_size
    if facts.get("target_vocab_size") != t.vocab_size or d.vocab_size != own_vocab:
        raise EdgegenError(f"drafter '{d.name}' has a vocabulary of {facts.get('target_vocab_size')} tokens; "
                           f"target '{t.name}' has {t.vocab_size}")
    if not isinstance(target, Manifest):
        sha = file_sha256(Path(target) / t.tokenizer)
        if sha != facts.get("target_tokenizer_sha256"):
            raise EdgegenError(f"drafter '{d.name}' was trained with another tokenizer than target '{t.name}'")

