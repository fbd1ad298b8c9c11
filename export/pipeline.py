"""`export_model`: source -> ONNX and/or OpenVINO graphs + tokenizer + edgegen.json, written atomically."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.export.progress import Stages, library_output, warn
from edgegen.files import atomic_folder, check_output_dir, link_or_copy
from edgegen.manifest import EXPORT_LOG, GraphInfo, Manifest

FORMATS = ("onnx", "openvino", "torch")  # torch: the HF weights themselves, for the torch backend
WEIGHTS = ("fp32", "fp16", "int8", "int4")
DEFAULT_FORMATS = ("onnx", "openvino")
DEFAULT_WEIGHTS = "int8"
DEFAULT_GROUP_SIZE = 128
# BOS by architecture when neither the GGUF nor the tokenizer files say: Gemma was trained with it,
# Llama-family chat models such as SmolLM2 were not.
_ADD_BOS_BY_TYPE = {"gemma": True, "gemma2": True, "gemma3": True, "gemma3_text": True}


def export_model(
    source: str | Path | None,
    out_dir: Path,
    *,
    formats: Sequence[str] | None = None,
    weights: str | None = None,
    sym: bool | None = None,
    group_size: int | None = None,
    profile: str | None = None,
    quality_gate: bool = True,
    progress: bool = True,
    execution_provider: str | None = None,
    embeddings: bool | None = None,
    verbose: bool = False,
) -> Path:
    """Export `source` into the edgegen model folder `out_dir` and return its path.

    source: None or "default" (the embedded SmolLM2 GGUF), a .gguf file, or a Hugging Face model folder.
    formats/weights/sym/group_size/execution_provider: None takes the device profile's value when a
    profile is given, else the built-in default (onnx+openvino, int8, asymmetric, group 128, cpu).
    quality_gate: score every graph's perplexity against the fp32 torch model (flag, never fail).
    embeddings: also build each format's input-embedding graph and save the token-embedding table
    (superposed decoding; see manifest.EmbeddingsInfo). None takes the profile's value, else off.
    The folder appears complete or not at all: everything is built in a hidden sibling and renamed.
    What the builders and quantizers print goes to ``export.log`` in the folder (to stderr when ``verbose``),
    never to stdout; progress shows edgegen's own stage lines on stderr.
    """
    from edgegen.export.source import resolve_source

    out_dir = Path(out_dir).expanduser().resolve()
    prof = None
    if profile is not None:
        from edgegen.profiles import load_profile

        prof = load_profile(profile)
    formats = tuple(formats if formats is not None else (prof.formats if prof else DEFAULT_FORMATS))
    weights = weights if weights is not None else (prof.weights if prof else DEFAULT_WEIGHTS)
    sym = sym if sym is not None else (prof.sym if prof else False)
    if group_size is None:
        group_size = prof.group_size if prof and prof.group_size > 0 else DEFAULT_GROUP_SIZE
    ep = execution_provider or (prof.onnx_execution_provider if prof else "cpu")
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise EdgegenError(f"unknown export format(s) {bad or '(none)'}: choose from {', '.join(FORMATS)}")
    if weights not in WEIGHTS:
        raise EdgegenError(f"unknown weight precision '{weights}': choose from {', '.join(WEIGHTS)}")
    if "torch" in formats:
        from edgegen.export.torch_format import check_weights

        check_weights(weights)
    embeddings = embeddings if embeddings is not None else (prof.embeddings if prof else False)

    src = resolve_source(source)  # validates before any heavy import or work
    check_output_dir(out_dir)
    stages = Stages(progress, ["convert GGUF"] * (src.kind == "gguf")
                    + _stage_names(formats, weights, quality_gate, embeddings))
    with atomic_folder(out_dir) as tmp, library_output(tmp / EXPORT_LOG, verbose):
        try:
            manifest = _export_into(tmp, src, formats, weights, sym, group_size, ep, quality_gate, stages, embeddings)
        except (EdgegenError, KeyboardInterrupt):
            raise
        except Exception as e:  # a builder's own failure: one line naming the stage and the model
            stage = next((n for n in stages.names if n not in stages.times), "export")
            detail = (str(e).strip().splitlines() or [""])[0]
            raise EdgegenError(f"{stage} failed for {src.name}: {type(e).__name__}: {detail}") from None
        if prof is not None:
            manifest = replace(manifest, profile=prof.name, static_shapes=dict(prof.static_shapes))
        manifest.write(tmp)  # last: a folder with edgegen.json is a complete folder
    stages.summary(out_dir)
    return out_dir


def _stage_names(formats: Sequence[str], weights: str, gate: bool, embeddings: bool = False) -> list[str]:
    names: list[str] = []
    for fmt in formats:
        if fmt == "torch":
            names.append(f"save torch weights ({weights})")
            continue
        names.append(f"build {'ONNX' if fmt == 'onnx' else 'OpenVINO'} ({weights})")
        if fmt == "openvino" and weights in ("int8", "int4"):
            names.append(f"compress OpenVINO weights ({weights})")
    if gate:
        names.append("quality gate")
    if embeddings:
        names += [f"build {'ONNX' if fmt == 'onnx' else 'OpenVINO'} embeddings graph" for fmt in formats
                  if fmt != "torch"]  # the torch model takes input embeddings itself
        names += ["save embedding table", "check embeddings graphs"]
    return names


def _export_into(
    tmp: Path,
    src: Any,
    formats: Sequence[str],
    weights: str,
    sym: bool,
    group_size: int,
    ep: str,
    quality_gate: bool,
    stages: Stages,
    embeddings: bool = False,
) -> Manifest:
    """Fill `tmp` with graphs and tokenizer files; returns the manifest (not yet written)."""
    from edgegen.export.source import copy_tokenizer_files, materialize_hf, source_sha256

    work = tmp / ".work"  # scratch (HF conversion, builder cache); removed before the folder is published
    work.mkdir()
    if src.kind == "gguf":
        with stages.stage("convert GGUF"):
            hf_dir = materialize_hf(src, work / "hf")
    else:
        hf_dir = src.path
    chat_template = copy_tokenizer_files(hf_dir, tmp)
    manifest = _manifest_from_hf(hf_dir, src, chat_template)
    graphs: dict[str, GraphInfo] = {}
    for fmt in formats:
        if fmt == "onnx":
            from edgegen.export.onnx import build_onnx

            with stages.stage(f"build ONNX ({weights})"):
                graphs["onnx"] = build_onnx(
                    hf_dir,
                    tmp,
                    weights=weights,
                    sym=sym,
                    group_size=group_size,
                    execution_provider=ep,
                    cache_dir=work / "onnx-cache",
                )
        elif fmt == "torch":
            from edgegen.export.torch_format import build_torch

            with stages.stage(f"save torch weights ({weights})"):
                graphs["torch"] = build_torch(hf_dir, tmp, weights)
        else:
            from edgegen.export.openvino import build_openvino_ir, compress_openvino_weights, describe_openvino

            with stages.stage(f"build OpenVINO ({weights})"):
                ir = build_openvino_ir(hf_dir, tmp, weights=weights)
            used_group = 0
            if weights in ("int8", "int4"):
                if weights == "int4" and quality_gate:  # kept for a re-quantization should the gate flag it
                    (work / "openvino-fp32").mkdir()
                    for suffix in (".xml", ".bin"):
                        link_or_copy(ir.with_suffix(suffix), work / "openvino-fp32" / ir.with_suffix(suffix).name)
                with stages.stage(f"compress OpenVINO weights ({weights})"):
                    used_group = compress_openvino_weights(ir, weights=weights, sym=sym, group_size=group_size)
            graphs["openvino"] = describe_openvino(tmp, ir, weights=weights, sym=sym, group_size=used_group)
    if quality_gate:
        with stages.stage("quality gate"):
            gate = _Gate(tmp, hf_dir, manifest, stages)
            graphs = {fmt: gate.score(graphs, fmt) for fmt in graphs}
        if weights == "int4":
            graphs = _int4_within_gate(gate, graphs, hf_dir, work, sym=sym, group_size=group_size, ep=ep)
        gate.warn_flagged(graphs)
    import edgegen

    manifest = replace(
        manifest,
        graphs=graphs,
        source={"kind": src.kind, "path": str(src.path), "sha256": source_sha256(src)},
        edgegen_version=getattr(edgegen, "__version__", ""),
    )
    if embeddings:
        from edgegen.export import embeddings as emb
        from edgegen.export.quality import gate_token_ids

        emb_graphs = emb.build_embedding_graphs(tmp, hf_dir, graphs, work / "onnx-cache", stages.stage)
        with stages.stage("save embedding table"):
            info = replace(emb.save_embedding_table(hf_dir, tmp, weights), graphs=emb_graphs)
        with stages.stage("check embeddings graphs"):
            ids = gate_token_ids(tmp / manifest.tokenizer, manifest.bos_token_id, manifest.add_bos,
                                 manifest.context_length)
            manifest = emb.finish_embeddings(tmp, manifest, info, ids, stages.note)
    shutil.rmtree(work)
    return manifest


class _Gate:
    """The quality gate of one export: the fp32 torch reference computed once, then each graph scored."""

    def __init__(self, tmp: Path, hf_dir: Path, manifest: Manifest, stages: Stages) -> None:
        from edgegen.export import quality

        self.tmp, self.manifest, self.stages = tmp, manifest, stages
        self.ids = quality.gate_token_ids(tmp / manifest.tokenizer, manifest.bos_token_id, manifest.add_bos,
                                          manifest.context_length)
        self.ppl_fp32 = quality.torch_perplexity(hf_dir, self.ids)
        stages.note(f"perplexity on {len(self.ids)} tokens of '{quality.TEXT_ID}': fp32 torch {self.ppl_fp32:.3f}")

    def score(self, graphs: dict[str, GraphInfo], fmt: str) -> GraphInfo:
        """graphs[fmt] with its quality record."""
        from edgegen.export import quality

        g = graphs[fmt]
        try:
            ppl = quality.graph_perplexity(self.tmp, replace(self.manifest, graphs=graphs), fmt, self.ids)
        except Exception as e:  # a graph its own runtime cannot run must not be published
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EdgegenError(f"the exported {fmt} {g.weights} graph does not run: {msg}") from None
        q = quality.gate_result(g.weights, ppl, self.ppl_fp32)
        share = f" ({g.int4_share:.0%} int4)" if g.int4_share is not None else ""
        self.stages.note(f"{fmt} {g.weights}{share}: {q['ppl']:.3f} (x{q['ratio']:.4f})"
                         + ("  FLAGGED" if q["flagged"] else ""))
        return replace(g, quality=q)

    def warn_flagged(self, graphs: dict[str, GraphInfo]) -> None:
        from edgegen.export import quality

        for fmt, g in graphs.items():
            q = g.quality
            if q.get("flagged"):
                limit = quality.THRESHOLDS.get(g.weights, 1.10)
                warn(f"{fmt} {g.weights} perplexity {q['ppl']:.3f} is {(q['ratio'] - 1) * 100:.1f}% above fp32 "
                     f"{q['ppl_fp32']:.3f} (limit {(limit - 1) * 100:.0f}%): check its output")


def _int4_within_gate(gate: _Gate, graphs: dict[str, GraphInfo], hf_dir: Path, work: Path, *, sym: bool,
                      group_size: int, ep: str) -> dict[str, GraphInfo]:
    """Re-quantize each int4 graph the gate flagged with a smaller int4 share (export/int4.py) until it passes;
    the last share tried stays (flagged) when none does."""
    from edgegen.export.int4 import INT4_SHARES

    graphs = dict(graphs)
    for fmt in [f for f, g in graphs.items() if g.quality.get("flagged") and f in ("onnx", "openvino")]:
        for share in INT4_SHARES:
            with gate.stages.stage(f"re-quantize {fmt} with {share:.0%} int4, the rest int8"):
                if fmt == "onnx":
                    from edgegen.export.onnx import requantize_onnx_int4

                    g = requantize_onnx_int4(hf_dir, gate.tmp, share=share, sym=sym, group_size=group_size,
                                             execution_provider=ep, cache_dir=work / "onnx-int4")
                else:
                    from edgegen.export.openvino import compress_openvino_weights, describe_openvino

                    ir = gate.tmp / graphs[fmt].path
                    used = compress_openvino_weights(ir, weights="int4", sym=sym, group_size=group_size,
                                                     int4_share=share, source=work / "openvino-fp32" / ir.name)
                    g = replace(describe_openvino(gate.tmp, ir, weights="int4", sym=sym, group_size=used),
                                int4_share=share)
                graphs[fmt] = gate.score({**graphs, fmt: g}, fmt)
            if not graphs[fmt].quality["flagged"]:
                break
    return graphs


def _manifest_from_hf(hf_dir: Path, src: Any, chat_template: str | None) -> Manifest:
    """Architecture facts from the HF config (the same numbers both builders used)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(hf_dir))
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = int(text.num_attention_heads)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    from edgegen.export.source import generation_ids

    eos, bos = generation_ids(hf_dir, getattr(text, "eos_token_id", None), getattr(cfg, "eos_token_id", None))
    bos = bos if bos is not None else getattr(text, "bos_token_id", None)
    return Manifest(
        name=src.name,
        architecture=text.model_type,
        num_layers=int(text.num_hidden_layers),
        hidden_size=int(text.hidden_size),
        num_heads=heads,
        num_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=int(head_dim),
        vocab_size=int(text.vocab_size),
        context_length=int(getattr(text, "max_position_embeddings", 0) or 0),
        bos_token_id=bos if isinstance(bos, int) else None,
        eos_token_ids=eos,
        add_bos=_decide_add_bos(hf_dir, src, text.model_type),
        chat_template=chat_template,
    )


def _decide_add_bos(hf_dir: Path, src: Any, model_type: str) -> bool:
    """GGUF metadata first, then the tokenizer's own setting, then a per-architecture default."""
    if src.add_bos is not None:
        return bool(src.add_bos)
    try:
        tc = json.loads((hf_dir / "tokenizer_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        tc = {}
    if isinstance(tc.get("add_bos_token"), bool):
        return tc["add_bos_token"]
    try:
        post = json.loads((hf_dir / "tokenizer.json").read_text()).get("post_processor") or {}
    except (OSError, json.JSONDecodeError):
        post = {}
    if post.get("type") == "TemplateProcessing" and post.get("single", [{}])[0].get("SpecialToken"):
        return True
    return _ADD_BOS_BY_TYPE.get(model_type, False)
