"""ONNX Runtime backend: GroupQueryAttention graphs with one preallocated, shared KV buffer.

The graph reads ``past`` and writes ``present`` into the same [1, kv_heads, capacity, head_dim]
buffer (IO binding), so no step copies the cache through Python; the attention mask's length tells
the kernel how many slots are valid. Rollback is therefore free: shrink the length and the next
forward overwrites the dropped slots.

Every forward computes its rows as a multi-row forward would (token identity between AR and
verification; see export.graph_edits). Exports with the ``row_pad`` edit do it inside the graph, where
only attention sees a second row; older exports and int4 graphs (every 4-bit matmul computes a lone row
another way) get a filler row on one-token calls (~16-25% per step).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgegen.errors import EdgegenError
from edgegen.manifest import HIDDEN_STATE, LOGITS_TO_KEEP, ROW_PAD, Manifest
from edgegen.runtimes.base import EmbeddingInputs, KVSnapshot, SlotCache

# device name (CLI/profile) -> execution provider
EXECUTION_PROVIDERS = {
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "DML": "DmlExecutionProvider",
    "OPENVINO": "OpenVINOExecutionProvider",
}
# where IO-bound tensors live for each provider
_BUFFER_DEVICE = {"CUDAExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}
_INITIAL_CAPACITY = 512


def available_devices() -> list[str]:
    have = set(ort.get_available_providers())
    return [d for d, ep in EXECUTION_PROVIDERS.items() if ep in have]


class OnnxRuntimeSession(SlotCache, EmbeddingInputs):
    """A Session (see runtimes.base) over an ONNX Runtime InferenceSession.

    embeddings=True runs the export's input-embedding graph (embed / forward_embeddings).
    """

    backend = "onnxruntime"

    def __init__(self, folder: Path, manifest: Manifest, device: str = "CPU", max_length: int | None = None,
                 threads: int | None = None, embeddings: bool = False) -> None:
        graph = manifest.embeddings_graph("onnx") if embeddings else manifest.graph("onnx")
        if graph.kv.stateful or not graph.kv.shared_buffer:
            raise EdgegenError(f"{folder}: the ONNX backend needs a shared-buffer KV graph; re-export the model")
        provider = EXECUTION_PROVIDERS.get(device.upper())
        if provider is None:
            raise EdgegenError(f"unknown onnxruntime device '{device}' (known: {', '.join(EXECUTION_PROVIDERS)})")
        if provider not in ort.get_available_providers():
            raise EdgegenError(
                f"device '{device}' is not present: onnxruntime has {', '.join(available_devices())}"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads sleep instead of spinning: on a machine where another process holds a core
        # (any laptop), a spinning pool waits on its descheduled thread at every op (measured on 2 cores,
        # one busy: 45 ms/token spinning vs 24 ms sleeping).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.manifest = manifest
        self.device = provider
        self._graph = graph
        try:
            self._session = ort.InferenceSession(str(folder / graph.path), options, providers=[provider])
        except Exception as e:  # onnxruntime raises bare RuntimeError/Fail subclasses
            raise EdgegenError(f"cannot load {folder / graph.path}: {str(e).splitlines()[0]}") from None
        if embeddings:
            self._open_embeddings(folder, manifest)
        self._input_name = graph.inputs["inputs_embeds" if embeddings else "input_ids"]
        if embeddings:  # a graph built for fp16 I/O (CUDA) takes fp16 embeddings
            kind = {i.name: i.type for i in self._session.get_inputs()}[self._input_name]
            self._embeds_dtype = np.float16 if kind == "tensor(float16)" else np.float32
        self._buffer_device = _BUFFER_DEVICE.get(provider, "cpu")
        self._kv_dtype = np.dtype(graph.kv.dtype)
        # int4 CPU exports made before their matmuls were found row-dependent (export.graph_edits) carry an
        # attention-only pad: their one-token calls get the filler row as well (re-export to drop the attention pad).
        stale_int4 = graph.weights == "int4" and graph.execution_provider == "cpu"
        self._row_pad = ROW_PAD in graph.edits and not stale_int4
        self._keep_input = LOGITS_TO_KEEP in graph.edits
        self.has_hidden = HIDDEN_STATE in graph.edits
        kinds = {o.name: o.type for o in self._session.get_outputs()}
        self._hidden_dtype = np.float16 if kinds.get(HIDDEN_STATE) == "tensor(float16)" else np.float32
        self._hidden_bound = False  # an output stays bound once bound: then every run binds it (to a scratch buffer)
        # The in-graph pad writes one slot past the last token, and gives it a rotary position: one spare.
        self._spare = 1 if ROW_PAD in graph.edits else 0
        self._limit = min(max_length or manifest.context_length, manifest.context_length - self._spare)
        self._binding = self._session.io_binding()
        self._keep = {k: np.array([k], np.int64) for k in (0, 1)}  # logits_to_keep: all rows, the last one
        self._ones = np.ones((1, 0), np.int64)  # the attention mask, grown as needed and sliced per step
        self._position = 0
        # GPU caches cannot grow cheaply: allocate the whole length once.
        full = self._limit + self._spare
        self._allocate(full if self._buffer_device != "cpu" else min(_INITIAL_CAPACITY, full))
        if self._buffer_device == "cpu":  # the buffers are NumPy arrays: the cache copies out and back (prompt cache)
            self.snapshot, self.restore = self._snapshot, self._restore
        self.reset()

    def _allocate(self, capacity: int) -> None:
        """(Re)allocate the KV buffers at ``capacity`` slots, keeping the first ``position`` entries."""
        m = self.manifest
        shape = (1, m.num_kv_heads, capacity, m.head_dim)
        old = getattr(self, "_cache", None)
        self._cache = []
        for layer in range(m.num_layers):
            pair = []
            for i in range(2):
                if self._buffer_device == "cpu":
                    buf = np.zeros(shape, self._kv_dtype)
                    if old is not None:
                        buf[:, :, : self._position] = old[layer][i][:, :, : self._position]
                    value = ort.OrtValue.ortvalue_from_numpy(buf)
                    pair.append(buf)
                else:
                    value = ort.OrtValue.ortvalue_from_shape_and_type(shape, self._kv_dtype, self._buffer_device, 0)
                    pair.append(value)
                self._bind_kv(layer, i, value)
            self._cache.append(pair)
        self._capacity = capacity

    def _bind_kv(self, layer: int, which: int, value: ort.OrtValue) -> None:
        kv = self._graph.kv
        past = (kv.past_key, kv.past_value)[which] % layer
        present = (kv.present_key, kv.present_value)[which] % layer
        # Same memory for input and output: the kernel appends the new entries in place.
        self._binding.bind_ortvalue_input(past, value)
        self._binding.bind_ortvalue_output(present, value)

    def _forward(self, x: np.ndarray, last_only: bool) -> np.ndarray:
        """x: int64 ids [1, n], or float32 embeddings [1, n, hidden] on an embeddings graph."""
        if not self._row_pad and x.shape[1] == 1 and self._position + 2 <= self._limit:
            # An export without the in-graph pad: run the token twice, keep the first row, drop the copy.
            logits = self._run(np.concatenate([x, x], axis=1), last_only=False)
            self._position -= 1
            if self._hidden is not None:
                self._hidden = self._hidden[:1]
            return logits[:1]
        return self._run(x, last_only)

    def _run(self, x: np.ndarray, last_only: bool) -> np.ndarray:
        n = x.shape[1]
        end = self._position + n
        if end > self._limit:
            raise EdgegenError(f"sequence of {end} tokens exceeds this session's maximum of {self._limit}")
        if end + self._spare > self._capacity:
            self._allocate(min(self._limit + self._spare, max(end + self._spare, 2 * self._capacity)))
        if x.dtype != np.int64 and x.dtype != self._embeds_dtype:
            x = x.astype(self._embeds_dtype)
        if self._ones.shape[1] < end:
            self._ones = np.ones((1, max(end, 2 * self._ones.shape[1])), np.int64)
        self._binding.bind_cpu_input(self._input_name, x)
        self._binding.bind_cpu_input(self._graph.inputs["attention_mask"], self._ones[:, :end])
        rows = n
        if self._keep_input:
            rows = 1 if last_only else n
            self._binding.bind_cpu_input(LOGITS_TO_KEEP, self._keep[1 if last_only else 0])
        if self._buffer_device == "cpu":
            logits = np.empty((1, rows, self.manifest.vocab_size), np.float32)
            self._binding.bind_output(self._graph.logits, "cpu", 0, np.float32, logits.shape, logits.ctypes.data)
        else:
            self._binding.bind_output(self._graph.logits, "cpu")
        hidden = None
        if self._want_hidden or self._hidden_bound:  # a plain step never binds it: nothing fetched, nothing copied
            hidden = np.empty((1, rows, self.manifest.hidden_size), self._hidden_dtype)
            self._binding.bind_output(HIDDEN_STATE, "cpu", 0, self._hidden_dtype, hidden.shape, hidden.ctypes.data)
            self._hidden_bound = True  # bound after the logits: the output order the GPU branch reads stays
        self._session.run_with_iobinding(self._binding)
        if self._buffer_device != "cpu":
            logits = self._binding.get_outputs()[0].numpy()
        self._position = end
        if self._want_hidden:
            rows_kept = hidden[0, -1:] if last_only else hidden[0]
            self._hidden = rows_kept.astype(np.float32, copy=False)
        return logits[0, -1:] if last_only else logits[0]

    def _snapshot(self) -> KVSnapshot:
        """Session.snapshot: the used slots of every layer's key and value buffers."""
        n = self._position
        return KVSnapshot(tuple(self._ids), tuple(buf[:, :, :n].copy() for pair in self._cache for buf in pair))

    def _restore(self, snapshot: KVSnapshot, length: int | None = None) -> None:
        """Session.restore: the snapshot's first ``length`` slots written back into the buffers."""
        n = snapshot.length(length)
        if len(snapshot.arrays) != 2 * len(self._cache) or n > self._limit:
            raise ValueError("this snapshot was not taken from this session")
        self._position = 0  # nothing to carry over if the buffers grow
        if n + self._spare > self._capacity:
            self._allocate(min(self._limit + self._spare, max(n + self._spare, 2 * self._capacity)))
        for buf, saved in zip((buf for pair in self._cache for buf in pair), snapshot.arrays, strict=True):
            buf[:, :, :n] = saved[:, :, :n]
        self._held(0, snapshot.token_ids[:n])
        self._position = n
