"""The export manifest (``edgegen.json``): every fact a runtime needs about an exported model.

Runtimes read this file and never guess names, shapes or precisions from file names. It is a leaf
module (standard library only) so export/, runtimes/ and the decode loop can all import it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError

MANIFEST_NAME = "edgegen.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class KVCacheLayout:
    """How a graph carries its KV cache between calls."""

    stateful: bool  # True: the runtime keeps it inside the graph (OpenVINO state); no KV inputs/outputs.
    shared_buffer: bool  # True: past and present are one preallocated [1, kv_heads, max_len, head_dim] buffer.
    past_key: str = ""  # input name pattern with %d for the layer, e.g. "past_key_values.%d.key"
    past_value: str = ""
    present_key: str = ""  # output name pattern, e.g. "present.%d.key"
    present_value: str = ""
    dtype: str = "float32"  # numpy dtype name of the cache tensors


@dataclass(frozen=True)
class GraphInfo:
    """One exported graph of the model (ONNX or OpenVINO IR)."""

    format: str  # "onnx" | "openvino"
    path: str  # relative to the model folder
    weights: str  # "fp32" | "fp16" | "int8" | "int4"
    inputs: dict[str, str]  # role -> graph name; roles: input_ids, attention_mask, position_ids, beam_idx
    logits: str  # output name of the logits, shape [batch, seq, vocab]
    kv: KVCacheLayout
    sym: bool = False
    group_size: int = -1  # -1: per channel, 0: not quantized
    execution_provider: str = "cpu"  # the EP the graph was built for (ONNX builder choice)
    quality: dict[str, Any] = field(default_factory=dict)  # perplexity gate results

    @staticmethod
    def from_dict(d: dict[str, Any]) -> GraphInfo:
        d = dict(d)
        d["kv"] = KVCacheLayout(**d["kv"])
        return GraphInfo(**d)


@dataclass(frozen=True)
class EmbeddingsInfo:
    """Input-embedding graphs (superposed decoding) and the token-embedding table that feeds them.

    Each graph is its format's normal graph with the token-embedding lookup cut off: it takes
    ``inputs_embeds`` [batch, seq, hidden] float32 (inputs role "inputs_embeds" instead of "input_ids"),
    the hidden state entering the first decoder layer, and keeps the same KV cache layout. That state is
    ``table[token] * scale``: the graphs do not scale (Gemma's sqrt(hidden) is applied by
    ``Session.embed``; 1.0 for SmolLM2, whose table is also its tied LM head).
    """

    table: str  # relative .npy file [rows, hidden], memory-mapped by the runtime
    dtype: str  # numpy dtype of the table: "float16" for fp16 exports, else "float32"
    scale: float  # multiply table rows by this to get inputs_embeds
    graphs: dict[str, GraphInfo] = field(default_factory=dict)  # keyed by format, like Manifest.graphs

    @staticmethod
    def from_dict(d: dict[str, Any]) -> EmbeddingsInfo:
        d = dict(d)
        d["graphs"] = {k: GraphInfo.from_dict(v) for k, v in d.get("graphs", {}).items()}
        return EmbeddingsInfo(**d)


@dataclass(frozen=True)
class Manifest:
    """Architecture facts, tokenizer files and graphs of one exported model folder."""

    name: str
    architecture: str  # transformers model_type, e.g. "llama", "gemma3_text"
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int
    bos_token_id: int | None
    eos_token_ids: list[int]
    add_bos: bool  # prepend BOS to raw prompts (Gemma: yes; SmolLM2: no, it was not trained with it)
    tokenizer: str = "tokenizer.json"
    chat_template: str | None = "chat_template.jinja"
    graphs: dict[str, GraphInfo] = field(default_factory=dict)  # keyed by format
    source: dict[str, Any] = field(default_factory=dict)  # {"path", "sha256", "kind": "gguf"|"hf"}
    profile: str | None = None
    static_shapes: dict[str, int] = field(default_factory=dict)  # {"max_prompt_len", "min_response_len"}
    extras: dict[str, Any] = field(default_factory=dict)  # strategy-specific data (drafter, LUD, ...)
    embeddings: EmbeddingsInfo | None = None  # input-embedding graphs, when exported with --embeddings
    edgegen_version: str = ""
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(self.to_json() + "\n")
        return path

    def graph(self, fmt: str) -> GraphInfo:
        if fmt not in self.graphs:
            have = ", ".join(sorted(self.graphs)) or "none"
            raise EdgegenError(f"model '{self.name}' has no {fmt} graph (exported formats: {have})")
        return self.graphs[fmt]

    def has_embeddings(self) -> bool:
        """True when every exported format also has its input-embedding graph."""
        return self.embeddings is not None and all(f in self.embeddings.graphs for f in self.graphs)

    def embeddings_graph(self, fmt: str) -> GraphInfo:
        """The ``fmt`` graph that takes inputs_embeds; a clear error when the export has none."""
        if self.embeddings is None or fmt not in self.embeddings.graphs:
            raise EdgegenError(f"model '{self.name}' has no {fmt} input-embedding graph: "
                               "re-export it with `edgegen export --embeddings`")
        return self.embeddings.graphs[fmt]

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Manifest:
        d = dict(d)
        d["graphs"] = {k: GraphInfo.from_dict(v) for k, v in d.get("graphs", {}).items()}
        if d.get("embeddings") is not None:
            d["embeddings"] = EmbeddingsInfo.from_dict(d["embeddings"])
        return Manifest(**d)


def is_model_folder(folder: Path) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def read_manifest(folder: str | Path) -> Manifest:
    """Read ``folder/edgegen.json``; any problem is one clear EdgegenError."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.exists():
        raise EdgegenError(f"model folder not found: {folder}")
    if not path.is_file():
        raise EdgegenError(f"{folder} is not an exported edgegen model (no {MANIFEST_NAME}); run 'edgegen export'")
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise EdgegenError(f"corrupt manifest {path}: {e}") from None
    if manifest.schema != SCHEMA_VERSION:
        raise EdgegenError(f"{path} has schema {manifest.schema}; this edgegen reads {SCHEMA_VERSION}: re-export")
    files = [g.path for g in manifest.graphs.values()]
    if manifest.embeddings is not None:
        files += [manifest.embeddings.table, *(g.path for g in manifest.embeddings.graphs.values())]
    for rel in files:
        if not (folder / rel).is_file():
            raise EdgegenError(f"model folder {folder} is incomplete: {rel} is missing")
    if not (folder / manifest.tokenizer).is_file():
        raise EdgegenError(f"model folder {folder} is incomplete: {manifest.tokenizer} is missing")
    return manifest
