"""OpenVINO native backend: stateful IR, the KV cache lives in the infer request's state.

CPU and GPU take any number of tokens per call. The NPU runs through NPUW with static shapes
(a prompt of at most max_prompt_len tokens, then one token per call up to min_response_len more).

Rolling the cache back (`trim`) does not touch the state: reading and rewriting it costs more than a forward
(2026-11-26, SmolLM2-135M on CPU: 22 ms to read the f16 state, +7 ms to write it, +10 ms on the next forward,
against 21 ms for a one-token step). The dropped slots stay in the state, masked out by the attention mask,
and the next tokens take the right position ids; the state is rewritten only when many slots are dead, or
before the live tokens would no longer fit a sliding attention window that counts slots.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openvino as ov

from edgegen.errors import EdgegenError
from edgegen.manifest import Manifest
from edgegen.runtimes.base import CachePosition, EmbeddingInputs

_core: ov.Core | None = None
_DEAD_SLOTS = 128  # trimmed slots kept (masked) in the state before it is rewritten: ~0.7 ms per 100 per step


def core() -> ov.Core:
    global _core
    if _core is None:
        _core = ov.Core()
    return _core


def available_devices() -> list[str]:
    return list(core().available_devices)


def _npu_config(static_shapes: dict[str, int]) -> dict[str, object]:
    config: dict[str, object] = {
        "NPU_USE_NPUW": "YES",
        "NPUW_LLM": "YES",
        "NPUW_LLM_MAX_PROMPT_LEN": static_shapes.get("max_prompt_len", 1024),
        "NPUW_LLM_MIN_RESPONSE_LEN": static_shapes.get("min_response_len", 128),
    }
    return config


class OpenVINOSession(CachePosition, EmbeddingInputs):
    """A Session (see runtimes.base) over a compiled stateful OpenVINO model.

    embeddings=True runs the export's input-embedding IR (embed / forward_embeddings); not on the NPU.
    """

    backend = "openvino"

    def __init__(self, folder: Path, manifest: Manifest, device: str = "CPU", max_length: int | None = None,
                 threads: int | None = None, npuw_devices: str | None = None, consistent_rows: bool = False,
                 embeddings: bool = False) -> None:
        device = device.upper()
        if embeddings and device == "NPU":
            raise EdgegenError("the NPU static graph has no input-embedding path: run superposed decoding on "
                               "CPU or GPU")
        graph = manifest.embeddings_graph("openvino") if embeddings else manifest.graph("openvino")
        if not graph.kv.stateful:
            raise EdgegenError(f"{folder}: the OpenVINO backend needs a stateful IR; re-export the model")
        present = available_devices()
        # NPUW can place the NPU graph on the CPU (NPUW_DEVICES=CPU): the NPU path, tested without an NPU.
        if device not in present and not (device == "NPU" and npuw_devices):
            raise EdgegenError(f"device '{device}' is not present: OpenVINO has {', '.join(present)}")
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        del consistent_rows  # OpenVINO's tokens already agree between one- and multi-row calls (tested)
        self._static = device == "NPU"
        self._limit = min(max_length or manifest.context_length, manifest.context_length)
        if self._static:
            shapes = manifest.static_shapes or {"max_prompt_len": 1024, "min_response_len": 128}
            config = _npu_config(shapes)
            if npuw_devices:
                config["NPUW_DEVICES"] = npuw_devices
            self._max_prompt = shapes.get("max_prompt_len", 1024)
            self._limit = self._max_prompt + shapes.get("min_response_len", 128)
        elif threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.manifest = manifest
        self.device = device
        self._graph = graph
        try:
            compiled = core().compile_model(str(folder / graph.path), device, config)
        except RuntimeError as e:
            raise EdgegenError(f"cannot compile {folder / graph.path} for {device}: {str(e).splitlines()[0]}") from None
        self._request = compiled.create_infer_request()
        self._names = graph.inputs
        if embeddings:
            self._open_embeddings(folder, manifest)
        self._input_name = graph.inputs["inputs_embeds" if embeddings else "input_ids"]
        self._beam_idx = np.zeros(1, np.int32)
        self._window = _sliding_window(folder / graph.path)
        self.reset()

    def forward(self, token_ids: np.ndarray, last_only: bool = False) -> np.ndarray:
        return self._forward(self._input(token_ids), last_only)

    def _forward(self, x: np.ndarray, last_only: bool) -> np.ndarray:
        """x: int64 ids [1, n], or float32 embeddings [1, n, hidden] on an embeddings graph."""
        n = x.shape[1]
        start, end = self._position, self._position + n
        if end > self._limit:
            raise EdgegenError(f"sequence of {end} tokens exceeds this session's maximum of {self._limit}")
        if self._static:
            if start == 0 and n > self._max_prompt:
                raise EdgegenError(f"prompt of {n} tokens exceeds the NPU graph's {self._max_prompt}")
            if start > 0 and n > 1:
                raise EdgegenError("the NPU static graph forwards one token at a time after the prompt")
        if self._window and len(self._slots) + n > self._window and len(self._slots) > start:
            self._compact()  # the window counts slots: dead ones would push live tokens out of it
        slots = np.concatenate([self._slots, np.ones(n, np.int64)])
        names = self._names
        inputs = {
            self._input_name: x,
            names["attention_mask"]: slots.reshape(1, -1),
            names["position_ids"]: np.arange(start, end, dtype=np.int64).reshape(1, -1),
            names["beam_idx"]: self._beam_idx,
        }
        self._request.infer(inputs)
        self._slots, self._position = slots, end
        logits = self._request.get_tensor(self._graph.logits).data[0]
        # Copy: the request reuses its output memory on the next call.
        return np.array(logits[-1:] if last_only else logits, np.float32)

    def trim(self, length: int) -> None:
        if not self._check_trim(length):
            return
        if self._static:
            raise EdgegenError("the NPU static graph cannot roll back its cache")
        live = np.flatnonzero(self._slots)
        self._slots[live[length:]] = 0
        self._position = length
        if len(self._slots) - length >= _DEAD_SLOTS:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the state with only the live slots."""
        keep = np.flatnonzero(self._slots)
        for state in self._request.query_state():
            value = state.state.data  # [batch, kv_heads, slots, head_dim]
            state.state = ov.Tensor(np.ascontiguousarray(value[:, :, keep]))
        self._slots = np.ones(len(keep), np.int64)

    def reset(self) -> None:
        self._request.reset_state()
        self._slots = np.ones(0, np.int64)  # the attention mask over the state's slots: 0 where trimmed
        self._position = 0


def _sliding_window(graph_path: Path) -> int | None:
    """The model's sliding attention window from the export's config.json (None: full attention)."""
    try:
        config = json.loads((graph_path.parent / "config.json").read_text())
    except (OSError, ValueError):
        return None
    window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
    return int(window) if window else None
