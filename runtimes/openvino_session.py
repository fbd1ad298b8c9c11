"""OpenVINO native backend over the export's stateful IR.

CPU and GPU take any number of tokens per call. On the CPU the session rewrites the IR's attention to
PagedAttention when it loads it (runtimes.openvino_paged: the KV cache in blocks the session owns, what
openvino-genai's default pipeline runs; faster decode and long-prompt prefill, docs/performance.md); on the GPU,
for an IR the rewrite refuses, and with ``paged=False`` the KV cache lives in the infer request's state. The
NPU, compiled by NPUW with static shapes, has its own session (runtimes.openvino_npu).

On the stateful path, rolling the cache back (`trim`) does not touch the state: reading and rewriting it costs
more than a forward (2026-11-26, SmolLM2-135M on CPU: 22 ms to read the f16 state, +7 ms to write it, +10 ms on
the next forward, against 21 ms for a one-token step). The dropped slots stay in the state, masked out by the
attention mask, and the next tokens take the right position ids; the state is rewritten only when many slots are
dead, or before the live tokens would no longer fit a sliding attention window that counts slots.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openvino as ov

from edgegen.errors import EdgegenError
from edgegen.manifest import HIDDEN_STATE, LOGITS_TO_KEEP, Manifest
from edgegen.runtimes.base import CachePosition, EmbeddingInputs, KVSnapshot
from edgegen.runtimes.openvino_paged import PagedCache, to_paged

_core: ov.Core | None = None
_DEAD_SLOTS = 128  # trimmed slots kept (masked) in the state before it is rewritten: ~0.7 ms per 100 per step
_EMBEDS, _EMBEDS_SCALE = "inputs_embeds", "embeds_scale"  # the paged IR's embeddings inputs
# Prompt tokens per prefill forward on the paged path (Session.prefill_chunk; strategies.base.PREFILL_CHUNK elsewhere):
# PagedAttention tiles its scores, so a longer chunk only holds more activations, and a 1,000-token prompt in one
# call prefills as fast as openvino-genai's (512-token chunks were slower; docs/performance.md).
_PAGED_PREFILL_CHUNK = 2048
NPUW_ENV = "EDGEGEN_NPUW_DEVICES"  # e.g. "CPU": run the NPU code path without an NPU (tests, CI)


def core() -> ov.Core:
    global _core
    if _core is None:
        _core = ov.Core()
    return _core


def available_devices() -> list[str]:
    return list(core().available_devices)


class OpenVINOSession(CachePosition, EmbeddingInputs):
    """A Session (see runtimes.base) over a compiled stateful OpenVINO model.

    embeddings=True also takes input embeddings (embed / forward_embeddings). CPU and GPU; the NPU's session is
    runtimes.openvino_npu.OpenVINONPUSession (runtimes.DEVICE_SESSIONS). ``paged`` (default: on the CPU) runs
    PagedAttention (runtimes.openvino_paged, where the IR allows it). A paged session compiles the token-id IR
    with an embeddings input beside the ids (``_add_embeddings_input``), whether or not it was asked for
    embeddings: its quantized cache blocks turn the ~5e-5 between two separately compiled IRs into ~8e-3 in
    the logits, while one graph gives a token's embedding and its id the same rows (bit for bit where the model
    has no embedding scale), so superposed decoding (embeddings) stays greedy-exact against every other strategy (ids).
    """

    backend = "openvino"

    def __init__(self, folder: Path, manifest: Manifest, device: str = "CPU", max_length: int | None = None,
                 threads: int | None = None, embeddings: bool = False, paged: bool | None = None) -> None:
        device = device.upper()
        paged = device == "CPU" and paged is not False  # the rewrite runs on the CPU, by default
        graph = manifest.graph("openvino")
        if not graph.kv.stateful:
            raise EdgegenError(f"{folder}: the OpenVINO backend needs a stateful IR; re-export the model")
        present = available_devices()
        if device not in present:
            raise EdgegenError(f"device '{device}' is not present: OpenVINO has {', '.join(present)}")
        # No pinning: a thread pinned to a core that another process holds waits for it at every op,
        # where an unpinned one moves (2026-12-01, 2 cores under load: 179 vs 261 ms per step; docs/performance.md).
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if device == "CPU":
            config["ENABLE_CPU_PINNING"] = False
        self._limit = min(max_length or manifest.context_length, manifest.context_length)
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.manifest = manifest
        self.device = device
        self._paged: PagedCache | None = None
        try:
            model, is_paged = _read(folder / graph.path, paged)
            # the paged graph takes embeddings itself (the class docstring says why); scaled rows
            # (EmbeddingsInfo.scale; none without a table: then only ids are fed)
            scale = manifest.embeddings.scale if manifest.embeddings is not None else 1.0
            self._embeds = _add_embeddings_input(model, scale) if is_paged else None
            if embeddings and self._embeds is None:  # the stateful path: the export's input-embedding IR
                graph = manifest.embeddings_graph("openvino")
                model, is_paged = _read(folder / graph.path, False)
            # a prefill needs only the last position's logits; paged graphs hold one row per token on axis 0
            self._keep = _add_logits_to_keep(model, 0 if is_paged else 1)
            self.has_hidden = _add_hidden_output(model)  # after the cut: the logits' rows
            compiled = core().compile_model(model, device, config)
        except RuntimeError as e:
            raise EdgegenError(f"cannot compile {folder / graph.path} for {device}: {str(e).splitlines()[0]}") from None
        self._request = compiled.create_infer_request()
        self._bound = _BoundInputs(self._request)
        if is_paged:
            self._paged = PagedCache(compiled, self._request, device, self._limit)
            self.prefill_chunk = _PAGED_PREFILL_CHUNK
        self._graph = graph
        self._names = graph.inputs
        if embeddings:
            self._open_embeddings(folder, manifest)
        self._input_name = graph.inputs["inputs_embeds" if "inputs_embeds" in graph.inputs else "input_ids"]
        self._beam_idx = np.zeros(1, np.int32)
        self._keep_rows = {k: np.array([k], np.int64) for k in (0, 1)}
        self._positions = np.arange(self._limit, dtype=np.int64).reshape(1, -1)  # position_ids are views of it
        self._mask = np.zeros((1, 512), np.int64)
        self._logits_port = compiled.output(graph.logits)
        self._hidden_port = compiled.output(HIDDEN_STATE) if self.has_hidden else None
        self._window = _sliding_window(folder / graph.path)
        self.reset()

    def _forward(self, x: np.ndarray, last_only: bool) -> np.ndarray:
        """x: int64 ids [1, n], or float32 embeddings [1, n, hidden] on an embeddings graph."""
        n = x.shape[1]
        start, end = self._position, self._position + n
        if end > self._limit:
            raise EdgegenError(f"sequence of {end} tokens exceeds this session's maximum of {self._limit}")
        if self._paged is not None:
            inputs = self._paged.inputs(start, n)
            if self._embeds is not None:
                inputs.update(self._embeds.inputs(x[0]))
            else:
                inputs[self._input_name] = x[0]
            inputs[self._names["position_ids"]] = self._positions[0, start:end]
        else:
            inputs = self._state_inputs(x, start, end)
        if self._keep:
            inputs[LOGITS_TO_KEEP] = self._keep_rows[1 if last_only else 0]
        # The inputs go into tensors the request keeps (a new tensor only where a shape changes), and the logits
        # are read from the request's own output memory (copied below, since the next call reuses it).
        self._bound.write(inputs)
        outputs = self._request.infer(share_outputs=True)
        self._position = end
        logits = outputs[self._logits_port]
        logits = logits.reshape(-1, logits.shape[-1])  # [1, rows, vocab] stateful, [rows, 1, vocab] paged
        if self._want_hidden:
            hidden = outputs[self._hidden_port]
            hidden = hidden.reshape(-1, hidden.shape[-1])
            self._hidden = np.array(hidden[-1:] if last_only else hidden, np.float32)
        return np.array(logits[-1:] if last_only else logits, np.float32)

    def _state_inputs(self, x: np.ndarray, start: int, end: int) -> dict[str, np.ndarray]:
        """The stateful graph's inputs: the attention mask over the state's slots (trimmed ones 0) grows by the
        ``end - start`` fed, which take the real positions."""
        n = end - start
        if self._window and len(self._slots) + n > self._window and len(self._slots) > start:
            self._compact()  # the window counts slots: dead ones would push live tokens out of it
        used = len(self._slots)
        mask = self._mask_buffer(used + n)
        mask[0, used:] = 1
        names = self._names
        self._slots = mask[0]  # the state holds these slots once the forward ran
        return {
            self._input_name: x,
            names["attention_mask"]: mask,
            names["position_ids"]: self._positions[:, start:end],
            names["beam_idx"]: self._beam_idx,
        }

    def _mask_buffer(self, count: int) -> np.ndarray:
        """The attention mask over the state's first ``count`` slots: a view of one buffer grown by doubling."""
        if count > self._mask.shape[1]:
            grown = np.zeros((1, max(count, 2 * self._mask.shape[1])), np.int64)
            grown[0, : len(self._slots)] = self._slots
            self._mask = grown
        return self._mask[:, :count]

    def trim(self, length: int) -> None:
        if not self._check_trim(length):
            return
        if self._paged is not None:  # the next forward overwrites the blocks' dropped slots
            self._held(length)
            self._position = length
            return
        live = np.flatnonzero(self._slots)
        self._slots[live[length:]] = 0
        self._held(length)
        self._position = length
        if len(self._slots) - length >= _DEAD_SLOTS:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the state with only the live slots."""
        keep = np.flatnonzero(self._slots)
        for state in self._request.query_state():
            value = state.state.data  # [batch, kv_heads, slots, head_dim]
            state.state = ov.Tensor(np.ascontiguousarray(value[:, :, keep]))
        self._slots = self._mask_buffer(len(keep))[0]
        self._slots[:] = 1

    def reset(self) -> None:
        if self._paged is None:
            self._request.reset_state()
        self._held(0)
        self._slots = self._mask[0, :0]  # the attention mask over the state's slots: 0 where trimmed
        self._position = 0

    def snapshot(self) -> KVSnapshot:
        """Session.snapshot: the state's live slots (the trimmed ones left out), one array per variable; on the
        paged cache, the blocks that hold the ``position`` tokens."""
        if self._paged is not None:
            return KVSnapshot(tuple(self._ids), self._paged.snapshot(self._position))
        live = np.flatnonzero(self._slots)
        whole = len(live) == len(self._slots)
        arrays = tuple(state.state.data[:, :, : len(live)].copy() if whole else state.state.data[:, :, live]
                       for state in self._request.query_state())
        return KVSnapshot(tuple(self._ids), arrays)

    def restore(self, snapshot: KVSnapshot, length: int | None = None) -> None:
        """Session.restore: the state rewritten with the snapshot's first ``length`` slots, all live."""
        n = snapshot.length(length)
        if n == 0:
            return self.reset()
        if self._paged is not None:
            if n > self._limit:
                raise ValueError("this snapshot was not taken from this session")
            self._paged.restore(snapshot.arrays, n)
            self._held(0, snapshot.token_ids[:n])
            self._position = n
            return None
        states = self._request.query_state()
        if len(states) != len(snapshot.arrays) or n > self._limit:
            raise ValueError("this snapshot was not taken from this session")
        for state, saved in zip(states, snapshot.arrays, strict=True):
            state.state = ov.Tensor(np.ascontiguousarray(saved[:, :, :n]))
        self._slots = self._mask_buffer(n)[0]
        self._slots[:] = 1
        self._held(0, snapshot.token_ids[:n])
        self._position = n


class _BoundInputs:
    """An infer request's input tensors, set once per shape and then written in place.

    Handing the request new tensors every step (``infer(inputs)``) made the plugin rebind each one, 1-4% of a
    one-token CPU step (docs/performance.md). A decode step's inputs keep their shapes, so after the first step
    only their values are copied in.
    """

    def __init__(self, request: ov.InferRequest) -> None:
        self._request = request
        self._arrays: dict[str, np.ndarray] = {}  # input name -> the memory of the tensor the request holds

    def write(self, inputs: dict[str, np.ndarray]) -> None:
        for name, value in inputs.items():
            held = self._arrays.get(name)
            if held is not None and held.shape == value.shape and held.dtype == value.dtype:
                held[...] = value
                continue
            held = np.array(value, order="C")  # our own copy: the caller's buffers change under it
            self._request.set_tensor(name, ov.Tensor(held, shared_memory=True))
            self._arrays[name] = held


def _read(path: Path, paged: bool) -> tuple[ov.Model, bool]:
    """The IR at ``path``, its attention rewritten to PagedAttention when ``paged`` and the rewrite takes it; and
    whether it did."""
    model = core().read_model(str(path))
    if not paged:
        return model, False
    if to_paged(model):
        return model, True
    return core().read_model(str(path)), False  # refused: the transformation may have left it half done


def _add_logits_to_keep(model: ov.Model, axis: int = 1) -> bool:
    """Give the LM head only the last ``logits_to_keep`` rows (along ``axis``) of the final hidden state (0 keeps
    all).

    The same cut openvino-genai makes before compiling: a prefill then computes one row of logits, not
    one per prompt position. A new int64 [1] input ``logits_to_keep``; False where no LM head MatMul is found.
    """
    from openvino import opset13 as ops

    if LOGITS_TO_KEEP in {n for p in model.inputs for n in p.get_names()}:
        return True
    node = _lm_head(model)
    if node is None:
        return False
    keep = ops.parameter(ov.PartialShape([1]), ov.Type.i64, name=LOGITS_TO_KEEP)
    keep.output(0).set_names({LOGITS_TO_KEEP})
    hidden = node.input_value(0)
    rows = ops.slice(hidden, ops.negative(keep), np.array([2**63 - 1]), np.array([1]), np.array([axis]))
    node.input(0).replace_source_output(rows.output(0))
    model.add_parameters([keep])
    model.validate_nodes_and_infer_types()
    return True


class _EmbeddingsInput:
    """The inputs of an IR edited by ``_add_embeddings_input``: ids with a zero embedding and scale 1, or
    embeddings with token 0 and scale 0 (zero buffers reused between steps). Embeddings are scaled rows
    (EmbeddingsInfo.scale): where the model scales its rows after the lookup (Gemma), they are divided by the
    scale here, as the separate embeddings IR does in its graph (export.openvino.build_openvino_embeds_ir), and
    then equal the lookup's rows to rounding, not bit for bit."""

    def __init__(self, hidden: int, scale: float) -> None:
        self._hidden = hidden
        self._unscale = np.float32(1.0 / scale)
        self._zero_ids = np.zeros(0, np.int64)
        self._zero_rows = np.zeros((0, 1, hidden), np.float32)
        self._scale = {True: np.ones((), np.float32), False: np.zeros((), np.float32)}

    def inputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """x: ids [n] or embeddings [n, hidden] -> the edited graph's three inputs."""
        n = x.shape[0]
        if n > len(self._zero_ids):
            self._zero_ids = np.zeros(max(n, 2 * len(self._zero_ids)), np.int64)
            self._zero_rows = np.zeros((len(self._zero_ids), 1, self._hidden), np.float32)
        ids = x.dtype == np.int64
        if ids:
            return {"input_ids": x, _EMBEDS: self._zero_rows[:n], _EMBEDS_SCALE: self._scale[True]}
        rows = x.reshape(n, 1, self._hidden)
        return {"input_ids": self._zero_ids[:n], _EMBEDS: rows * self._unscale if self._unscale != 1 else rows,
                _EMBEDS_SCALE: self._scale[False]}


def _add_embeddings_input(model: ov.Model, scale: float) -> _EmbeddingsInput | None:
    """Give the token-id IR an embeddings input: the first layer reads ``lookup(ids) * embeds_scale +
    inputs_embeds`` (exact for either: x * 1 + 0 and y * 0 + x). None where no embedding lookup is found
    (then the session takes ids only). Applied to paged graphs, whose ``input_ids`` are [tokens] and whose lookup
    gives [tokens, 1, hidden]. ``scale``: the model's embedding scale (EmbeddingsInfo.scale)."""
    from openvino import opset13 as ops

    ids = next((p for p in model.get_parameters() if "input_ids" in p.output(0).get_names()), None)
    lookup = _embedding_lookup(ids.output(0)) if ids is not None else None
    if lookup is None:
        return None
    rows = lookup.output(0)
    readers = list(rows.get_target_inputs())
    embeds = ops.parameter(rows.get_partial_shape(), ov.Type.f32, name=_EMBEDS)
    gain_param = ops.parameter(ov.PartialShape([]), ov.Type.f32, name=_EMBEDS_SCALE)
    for param in (embeds, gain_param):
        param.output(0).set_names({param.get_friendly_name()})
    x, gain = embeds.output(0), gain_param.output(0)
    if rows.get_element_type() != ov.Type.f32:  # a lookup in the model's own float type
        x, gain = (ops.convert(v, rows.get_element_type()).output(0) for v in (x, gain))
    mixed = ops.add(ops.multiply(rows, gain), x)
    for reader in readers:
        reader.replace_source_output(mixed.output(0))
    model.add_parameters([embeds, gain_param])
    model.validate_nodes_and_infer_types()
    return _EmbeddingsInput(rows.get_partial_shape()[-1].get_length(), scale)


def _embedding_lookup(ids: ov.Output, depth: int = 3) -> ov.Node | None:
    """The Gather that looks the ids up in the embedding table: the first float-valued Gather at most ``depth``
    nodes below them (past the Unsqueeze / Convert the converter puts between)."""
    for reader in ids.get_target_inputs():
        node = reader.get_node()
        if node.get_type_name() == "Gather" and node.get_output_element_type(0).is_real():
            return node
        if depth > 1 and node.get_output_size() == 1:
            found = _embedding_lookup(node.output(0), depth - 1)
            if found is not None:
                return found
    return None


def _lm_head(model: ov.Model) -> ov.Node | None:
    """The LM head's MatMul: walked back from the logits output, past a Convert or a softcap."""
    node = next((r.input_value(0).get_node() for r in model.get_results() if "logits" in r.output(0).get_names()
                 or "logits" in r.input_value(0).get_names()), None)
    while node is not None and node.get_type_name() != "MatMul":
        node = node.input_value(0).get_node() if node.get_input_size() else None
    return node


def _add_hidden_output(model: ov.Model) -> bool:
    """Expose the LM head's input (the final norm's output, after the logits_to_keep cut) as the output
    ``hidden_state``, the same tensor the LM head reads (export.graph_edits makes the ONNX twin); False where no
    LM head MatMul is found."""
    from openvino import opset13 as ops

    if HIDDEN_STATE in {n for p in model.outputs for n in p.get_names()}:
        return True
    node = _lm_head(model)
    if node is None:
        return False
    result = ops.result(node.input_value(0))
    result.output(0).set_names({HIDDEN_STATE})
    model.add_results([result])
    return True


def _sliding_window(graph_path: Path) -> int | None:
    """The model's sliding attention window from the export's config.json (None: full attention)."""
    try:
        config = json.loads((graph_path.parent / "config.json").read_text())
    except (OSError, ValueError):
        return None
    window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
    return int(window) if window else None
