"""The export manifest (``edgegen.json``): every fact a runtime needs about an exported model.

Runtimes read this file and never guess names, shapes or precisions from file names. It is a leaf
module (standard library only, with integrity.py) so export/, runtimes/ and the decode loop can all import
it. The file is untrusted input: ``read_manifest`` checks every value's type and range, keeps every named
path inside the folder and compares each file's size with the one recorded at export.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.integrity import check_links, check_sizes, inside, record_files, verify_files

MANIFEST_NAME = "edgegen.json"
SCHEMA_VERSION = 1
# GraphInfo.edits: what edgegen changed in a built graph (export/graph_edits.py), read by the runtimes
ROW_PAD = "row_pad"  # attention computes a lone row as one of several (token identity at one-row cost)
LOGITS_TO_KEEP = "logits_to_keep"  # an int64 [1] input: the LM head sees only the last k rows (0: all)
HIDDEN_STATE = "hidden_state"  # an output [1, rows, hidden]: the LM head's input (after the final norm), same rows
BACKEND_CHOICE = "backend-choice.json"  # written next to the graphs after export (models.choose_backend)
EXPORT_LOG = "export.log"  # the libraries' output during export
UNRECORDED = (MANIFEST_NAME, BACKEND_CHOICE, EXPORT_LOG)  # files of a model folder without a size/sha256 record


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
    edits: list[str] = field(default_factory=list)  # edgegen's graph edits (export.graph_edits), e.g. row_pad
    int4_share: float | None = None  # int4 graphs: share of the weights at int4, the rest int8 (None: all as built)

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
    # {relative path: {"size", "sha256"}} of every file of the folder (integrity.record_files); empty in
    # manifests written before edgegen recorded them.
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def write(self, folder: Path) -> Path:
        """Record the size and sha256 of every file now in ``folder``, then write edgegen.json (atomically)."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        recorded = replace(self, files=record_files(folder, skip=UNRECORDED))
        tmp = folder / f".{MANIFEST_NAME}.tmp"
        tmp.write_text(recorded.to_json() + "\n")
        os.replace(tmp, path)
        return path

    def named_files(self) -> list[tuple[str, str]]:
        """(what, relative path) of every file this manifest names."""
        named = [("tokenizer", self.tokenizer)]
        if self.chat_template is not None:
            named.append(("chat_template", self.chat_template))
        named += [(f"{fmt} graph", g.path) for fmt, g in self.graphs.items()]
        if self.embeddings is not None:
            named.append(("embeddings table", self.embeddings.table))
            named += [(f"{fmt} embeddings graph", g.path) for fmt, g in self.embeddings.graphs.items()]
        return named

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
        _check_manifest(d)
        d = dict(d)
        d["graphs"] = {k: GraphInfo.from_dict(v) for k, v in d.get("graphs", {}).items()}
        if d.get("embeddings") is not None:
            d["embeddings"] = EmbeddingsInfo.from_dict(d["embeddings"])
        return Manifest(**d)


# --- validation of an untrusted edgegen.json: each value's type and range, one ValueError naming it --------


def _is_int(v: Any, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _expect(ok: bool, key: str, want: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{key} must be {want}, not {json.dumps(value)[:60]}")


def _check_fields(d: Any, where: str, ints: dict[str, int], strs: tuple[str, ...], bools: tuple[str, ...] = (),
                  dicts: tuple[str, ...] = ()) -> None:
    _expect(isinstance(d, dict), where or "the manifest", "a JSON object", d)
    for key, lo in ints.items():
        if key in d:
            _expect(_is_int(d[key], lo), f"{where}{key}", f"an integer >= {lo}", d[key])
    for key in strs:
        if key in d:
            _expect(isinstance(d[key], str), f"{where}{key}", "a string", d[key])
    for key in bools:
        if key in d:
            _expect(isinstance(d[key], bool), f"{where}{key}", "true or false", d[key])
    for key in dicts:
        if key in d:
            _expect(isinstance(d[key], dict), f"{where}{key}", "a JSON object", d[key])


def _check_graph(g: Any, where: str) -> None:
    _check_fields(g, where, {"group_size": -1}, ("format", "path", "weights", "logits", "execution_provider"),
                  ("sym",), ("inputs", "kv", "quality"))
    _check_fields(g["kv"] if "kv" in g else {}, f"{where}kv.", {}, ("past_key", "past_value", "present_key",
                  "present_value", "dtype"), ("stateful", "shared_buffer"))
    _expect(all(isinstance(k, str) and isinstance(v, str) for k, v in g.get("inputs", {}).items()),
            f"{where}inputs", "an object of strings", g.get("inputs"))
    edits = g.get("edits", [])
    _expect(isinstance(edits, list) and all(isinstance(e, str) for e in edits), f"{where}edits", "a list of strings",
            edits)


def _check_manifest(d: Any) -> None:
    sizes = {k: 1 for k in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size")}
    _check_fields(d, "", {**sizes, "context_length": 0, "schema": 0}, ("name", "architecture", "tokenizer",
                  "edgegen_version"), ("add_bos",), ("graphs", "source", "static_shapes", "extras", "files"))
    for key in ("chat_template", "profile"):
        _expect(d.get(key) is None or isinstance(d[key], str), key, "a string or null", d.get(key))
    _expect(d.get("bos_token_id") is None or _is_int(d["bos_token_id"], 0), "bos_token_id", "a token id or null",
            d.get("bos_token_id"))
    eos = d.get("eos_token_ids", [])
    _expect(isinstance(eos, list) and all(_is_int(t, 0) for t in eos), "eos_token_ids", "a list of token ids", eos)
    if _is_int(d.get("num_heads"), 1) and _is_int(d.get("num_kv_heads"), 1):
        _expect(d["num_heads"] % d["num_kv_heads"] == 0, "num_kv_heads", f"a divisor of num_heads {d['num_heads']}",
                d["num_kv_heads"])
    for key, value in d.get("static_shapes", {}).items():
        _expect(_is_int(value, 1), f"static_shapes.{key}", "an integer >= 1", value)
    for fmt, g in d.get("graphs", {}).items():
        _check_graph(g, f"graphs.{fmt}.")
    for rel, rec in d.get("files", {}).items():
        _expect(isinstance(rec, dict) and _is_int(rec.get("size"), 0) and isinstance(rec.get("sha256"), str),
                f"files.{rel}", "{size, sha256}", rec)
    emb = d.get("embeddings")
    if emb is not None:
        _check_fields(emb, "embeddings.", {}, ("table", "dtype"), (), ("graphs",))
        _expect(isinstance(emb.get("scale"), int | float) and not isinstance(emb.get("scale"), bool),
                "embeddings.scale", "a number", emb.get("scale"))
        for fmt, g in emb.get("graphs", {}).items():
            _check_graph(g, f"embeddings.graphs.{fmt}.")


def is_model_folder(folder: Path) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def read_manifest(folder: str | Path, check_files: bool = True) -> Manifest:
    """Read ``folder/edgegen.json``; any problem is one clear EdgegenError.

    Every value is type- and range-checked, every named path must stay inside ``folder``, and (check_files)
    every recorded file must have the size its export wrote."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.exists():
        raise EdgegenError(f"model folder not found: {folder}")
    if not path.is_file():
        raise EdgegenError(f"{folder} is not an exported edgegen model (no {MANIFEST_NAME}); run 'edgegen export'")
    try:
        manifest = Manifest.from_dict(json.loads(path.read_bytes()))
    except (ValueError, TypeError, KeyError, RecursionError) as e:  # JSON, UTF-8, missing or unknown keys
        raise EdgegenError(f"corrupt manifest {path}: {e}") from None
    if manifest.schema != SCHEMA_VERSION:
        raise EdgegenError(f"{path} has schema {manifest.schema}; this edgegen reads {SCHEMA_VERSION}: re-export")
    for what, rel in manifest.named_files():
        if not inside(folder, rel, what).is_file() and what != "chat_template":
            raise EdgegenError(f"model folder {folder} is incomplete: {rel} is missing")
    check_links(folder)
    if check_files:
        check_sizes(folder, manifest.files)
    return manifest


def verify_model(folder: str | Path) -> tuple[Manifest, list[str]]:
    """Compare every file of an exported folder with the size and sha256 its export recorded (reads every byte).

    Returns the manifest and one line per problem (none: intact). A manifest from before edgegen recorded
    hashes has ``files`` empty: the caller says the hashes are absent."""
    folder = Path(folder)
    manifest = read_manifest(folder, check_files=False)
    return manifest, verify_files(folder, manifest.files)
