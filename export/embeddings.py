"""Input-embedding graphs for superposed decoding: graphs fed ``inputs_embeds`` instead of token ids.

An export with embeddings holds, next to its normal graphs, one graph per format that takes the hidden
state entering the first decoder layer (see manifest.EmbeddingsInfo), and the float token-embedding
table (``embeddings.npy``) that the runtime's ``Session.embed`` reads. They are added either by
``export_model(..., embeddings=True)`` or, to an existing export, by ``add_embeddings``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.files import link_or_copy
from edgegen.manifest import EXPORT_LOG, MANIFEST_NAME, EmbeddingsInfo, GraphInfo, Manifest, read_manifest

TABLE_FILE = "embeddings.npy"
# A wrong cut or scale moves logits by whole units and changes most argmaxes; a float table against a
# quantized in-graph lookup (OpenVINO int8/int4) changes a few.
_MIN_AGREEMENT = 0.8
_CHECK_TOKENS = 32
_LINK_MIN_BYTES = 1 << 20
def embedding_scale(hf_dir: Path) -> float:
    """The factor a model multiplies its embedding rows by, as the ONNX model builder applies it."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(hf_dir))
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    if str(text.model_type).startswith("gemma"):
        return float(np.round(np.sqrt(text.hidden_size), decimals=2))  # the builder rounds it like this
    for name in ("embedding_multiplier", "mup_embedding_multiplier"):  # Granite, Phi-3-small
        value = getattr(text, name, None)
        if isinstance(value, (int, float)) and value != 1:
            return float(value)
    return 1.0


def save_embedding_table(hf_dir: Path, model_folder: Path, weights: str) -> EmbeddingsInfo:
    """Write the model's float token-embedding table as ``embeddings.npy`` (fp16 for fp16 exports, else fp32).

    Taken from the HF model before any quantization. fp32 even for int8/int4 graphs: ONNX Runtime's
    int8 kernels quantize activations per token, so fp16-rounded rows alone move logits by whole units,
    while fp32 rows reproduce its ids graph exactly (the int8 ONNX embedding lookup stays float).
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    table = model.get_input_embeddings().weight.detach().float().numpy()
    del model
    dtype = np.float16 if weights == "fp16" and np.abs(table).max() < np.finfo(np.float16).max else np.float32
    np.save(model_folder / TABLE_FILE, np.ascontiguousarray(table, dtype=dtype))
    return EmbeddingsInfo(table=TABLE_FILE, dtype=np.dtype(dtype).name, scale=embedding_scale(hf_dir))


def build_embedding_graphs(
    folder: Path, hf_dir: Path, graphs: dict[str, GraphInfo], cache_dir: Path, stage: Callable[[str], Any]
) -> dict[str, GraphInfo]:
    """Build the input-embedding graph of every format in ``graphs`` (already in ``folder``), same precision.

    stage(name) is a context manager that shows the step (Stages.stage).
    """
    out: dict[str, GraphInfo] = {}
    for fmt, g in graphs.items():
        if fmt == "torch":
            continue  # the torch model takes input embeddings itself (runtimes.NATIVE_EMBEDDINGS)
        if fmt == "onnx":
            from edgegen.export.onnx import build_onnx, requantize_onnx_int4

            with stage("build ONNX embeddings graph"):
                if g.int4_share is not None:  # the normal graph's int4/int8 mix, not the builder's all-int4
                    out[fmt] = requantize_onnx_int4(hf_dir, folder, share=g.int4_share, sym=g.sym,
                                                    group_size=g.group_size, execution_provider=g.execution_provider,
                                                    cache_dir=cache_dir / "int4", embeds=True)
                else:
                    out[fmt] = build_onnx(hf_dir, folder, weights=g.weights, sym=g.sym, group_size=g.group_size,
                                          execution_provider=g.execution_provider, cache_dir=cache_dir, embeds=True)
        elif fmt == "openvino":
            from edgegen.export.openvino import OV_EMBEDS_MODEL, build_openvino_embeds_ir, describe_openvino

            with stage("build OpenVINO embeddings graph"):
                ir = folder / g.path
                scale = embedding_scale(hf_dir)
                embeds_ir = build_openvino_embeds_ir(ir, ir.with_name(OV_EMBEDS_MODEL), scale=scale)
                out[fmt] = replace(describe_openvino(folder, embeds_ir, weights=g.weights, sym=g.sym,
                                                     group_size=g.group_size), int4_share=g.int4_share)
        else:
            raise EdgegenError(f"no input-embedding graph for format '{fmt}'")
    return out


def check_embedding_graphs(folder: Path, manifest: Manifest, ids: list[int]) -> dict[str, dict[str, float]]:
    """Run ``ids`` through each normal graph and through its embeddings graph fed embed(ids); compare.

    Returns {format: {"argmax_agreement", "max_abs_diff"}}; a graph that clearly disagrees (a wrong cut
    or scale) is an EdgegenError, so it is never published.
    """
    from edgegen.runtimes import BACKENDS, open_session

    assert manifest.embeddings is not None
    ids_arr = np.asarray(ids[:_CHECK_TOKENS], np.int64)
    results: dict[str, dict[str, float]] = {}
    for backend, (_, _, fmt) in BACKENDS.items():
        if fmt not in manifest.embeddings.graphs or manifest.embeddings.graphs[fmt].execution_provider != "cpu":
            continue  # graphs built for a GPU execution provider are not run here
        plain = open_session(folder, manifest, backend).forward(ids_arr)
        session = open_session(folder, manifest, backend, embeddings=True)
        fed = session.forward_embeddings(session.embed(ids_arr))
        agreement = float((plain.argmax(-1) == fed.argmax(-1)).mean()) if np.isfinite(fed).all() else 0.0
        results[fmt] = {"argmax_agreement": round(agreement, 4),
                        "max_abs_diff": round(float(np.abs(plain - fed).max()), 4)}
        if agreement < _MIN_AGREEMENT:
            raise EdgegenError(f"the {fmt} embeddings graph disagrees with the {fmt} graph "
                               f"({agreement:.0%} of next tokens agree); not published")
    return results


def finish_embeddings(
    folder: Path, manifest: Manifest, info: EmbeddingsInfo, ids: list[int], note: Callable[[str], None]
) -> Manifest:
    """Check the new graphs against the normal ones and return the manifest that declares them."""
    manifest = replace(manifest, embeddings=info)
    checks = check_embedding_graphs(folder, manifest, ids)
    graphs = {fmt: replace(g, quality={"embeddings_check": checks[fmt]}) if fmt in checks else g
              for fmt, g in info.graphs.items()}
    for fmt, c in checks.items():
        note(f"{fmt} embeddings graph: next-token agreement {c['argmax_agreement']:.0%}, "
             f"max |logit diff| {c['max_abs_diff']:.3g}")
    return replace(manifest, embeddings=replace(info, graphs=graphs))


def add_embeddings(folder: Path, progress: bool = True) -> Path:
    """Add input-embedding graphs and the embedding table to the existing export ``folder``, atomically.

    The model is rebuilt from the source recorded in its manifest; the existing graphs are kept as they
    are (hard links in the new folder, which then replaces the old one).
    """
    from edgegen.export.progress import Stages, library_output
    from edgegen.export.quality import gate_token_ids
    from edgegen.export.source import materialize_hf, resolve_source
    from edgegen.files import atomic_folder

    folder = Path(folder)
    manifest = read_manifest(folder)
    source = manifest.source.get("path")
    if not source or not Path(source).exists():
        raise EdgegenError(f"the source of {folder} ({source or 'unknown'}) is gone: "
                           "re-export it with `edgegen export --embeddings`")
    src = resolve_source(source)
    names = ["convert GGUF"] * (src.kind == "gguf") + [
        f"build {'ONNX' if f == 'onnx' else 'OpenVINO'} embeddings graph" for f in manifest.graphs
    ] + ["save embedding table", "check embeddings graphs"]
    stages = Stages(progress, names)
    with atomic_folder(folder) as tmp, library_output(tmp / EXPORT_LOG):
        _link_tree(folder, tmp)
        (tmp / MANIFEST_NAME).unlink()  # written last: a folder with edgegen.json is complete
        for stale in (manifest.embeddings.graphs.values() if manifest.embeddings else ()):
            (tmp / stale.path).unlink(missing_ok=True)
        work = tmp / ".work"
        work.mkdir()
        hf_dir = src.path
        if src.kind == "gguf":
            with stages.stage("convert GGUF"):
                hf_dir = materialize_hf(src, work / "hf")
        graphs = build_embedding_graphs(tmp, hf_dir, manifest.graphs, work / "onnx-cache", stages.stage)
        with stages.stage("save embedding table"):
            info = replace(save_embedding_table(hf_dir, tmp, _table_weights(manifest)), graphs=graphs)
        shutil.rmtree(work)
        with stages.stage("check embeddings graphs"):
            ids = gate_token_ids(tmp / manifest.tokenizer, manifest.bos_token_id, manifest.add_bos)
            manifest = finish_embeddings(tmp, manifest, info, ids, stages.note)
        manifest.write(tmp)
    stages.summary(folder)
    return folder


def _table_weights(manifest: Manifest) -> str:
    return "fp16" if all(g.weights == "fp16" for g in manifest.graphs.values()) else "fp32"


def _link_tree(src: Path, dst: Path) -> None:
    """Mirror ``src`` into ``dst``, skipping hidden entries: large files as hard links (they are never
    written again), small ones as copies (edgegen.json and backend-choice.json are rewritten in place)."""
    for root, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            path = Path(root) / name
            if path.stat().st_size < _LINK_MIN_BYTES:
                shutil.copy2(path, dst / rel / name)
            else:
                link_or_copy(path, dst / rel / name)
