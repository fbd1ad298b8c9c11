"""OpenVINO on the NPU: the stateful IR compiled by NPUW's LLM pipeline, with static shapes.

NPUW splits the model into a prefill graph (a prompt of at most ``max_prompt_len`` tokens, one call) and a
generation graph that takes up to ``max_generation_len`` tokens per call (NPUW_LLM_MAX_GENERATION_TOKEN_LEN;
NPUW's own default is 1). A step of K+1 rows (a draft and the token before it) therefore runs in one call,
as openvino-genai's FastDraft-on-NPU path does. Checked on openvino 2026.4.1 with NPUW_DEVICES=CPU
(docs/npu.md):

- both graphs return a fixed number of logits rows, the real ones last (right-aligned);
- the KV cache is rolled back by position: a call whose position_ids start below the tokens NPUW holds
  overwrites from there, so ``trim`` only moves the position (no state is read or written). NPUW copies the
  attention mask's first (length - n) entries over its own mask of the cached slots and leaves the rest as
  they were, so after a rollback the mask must run to the highest slot written, with zeros past the
  position, or the new rows attend to the rejected tokens' stale entries;
- a call needs room for a whole generation step: the cache holds max_prompt_len + min_response_len slots
  and a step fails once fewer than max_generation_len are free, so the graph is compiled with that much
  more response room than the profile promises;
- the input-embedding IR (superposed decoding) compiles and runs the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.manifest import Manifest
from edgegen.runtimes.base import CachePosition, EmbeddingInputs
from edgegen.runtimes.openvino_session import NPUW_ENV, available_devices, core

# The NPU profile's shapes (device_profiles/core-ultra-npu.toml); used for what an export does not record.
DEFAULT_SHAPES = {"max_prompt_len": 1024, "min_response_len": 128, "max_generation_len": 8}
# Session.row_noise: how far a logit of a call's row after the first may lie from AR's (a call's first row), the
# measured bound with margin (docs/npu.md). Every piece on the CPU, f32 between them: up to 0.015. On an NPU (f16
# between the pieces): up to 0.032 on the CPU placement with NPUW's f16 interconnect; not measured on an NPU.
ROW_NOISE_CPU, ROW_NOISE_NPU = 0.02, 0.05


def npu_shapes(manifest: Manifest, profile_shapes: dict[str, int] | None = None) -> dict[str, int]:
    """The static shapes a session compiles: the export's, else the profile's, else NPUW's usual defaults.

    An export made before edgegen recorded ``max_generation_len`` (or a CPU export run on the NPU) takes the
    rest from the profile."""
    return {**DEFAULT_SHAPES, **(profile_shapes or {}), **manifest.static_shapes}


def npuw_config(shapes: dict[str, int], npuw_devices: str | None) -> dict[str, object]:
    """NPUW compile properties for these static shapes (see the module docstring for the response room)."""
    config: dict[str, object] = {
        "NPU_USE_NPUW": "YES",
        "NPUW_LLM": "YES",
        "NPUW_LLM_MAX_PROMPT_LEN": shapes["max_prompt_len"],
        "NPUW_LLM_MIN_RESPONSE_LEN": shapes["min_response_len"] + shapes["max_generation_len"],
        "NPUW_LLM_MAX_GENERATION_TOKEN_LEN": shapes["max_generation_len"],
    }
    return config | npuw_device_properties(npuw_devices)


def npuw_device_properties(npuw_devices: str | None) -> dict[str, object]:
    """Where NPUW places the pieces (``NPUW_DEVICES``), and how when every piece runs on the CPU (no NPU: tests,
    CI, the bench here): f32 between the pieces. NPUW's f16 interconnect (an NPU computes in f16) rounds on the
    CPU what it would not, and made a row's logits move by up to ~0.03 with its place in a K-row call, which
    turns near-ties between AR and verification; without it they move by < 0.01 (docs/npu.md). An NPU keeps
    NPUW's defaults. openvino-genai's NPU pipeline gets the same (runtimes.baselines)."""
    if not npuw_devices:
        return {}
    config: dict[str, object] = {"NPUW_DEVICES": npuw_devices}
    if on_cpu(npuw_devices):
        config["NPUW_F16IC"] = "NO"
    return config


def on_cpu(npuw_devices: str | None) -> bool:
    """Whether NPUW places every piece on the CPU (``NPUW_DEVICES=CPU``: the NPU path without an NPU)."""
    return (npuw_devices or "").upper() == "CPU"


def _compile(path: Path, config: dict[str, object]) -> object:
    """Compile for the NPU; where NPUW's online partitioning fails (2026.4.1: models of 2 layers, e.g. the shipped
    drafter: "Model references undeclared parameters"), again with the model as one piece."""
    try:
        return core().compile_model(core().read_model(str(path)), "NPU", config)
    except RuntimeError as first:
        try:
            return core().compile_model(core().read_model(str(path)), "NPU", {**config, "NPUW_ONLINE_PIPELINE": "NONE"})
        except RuntimeError:
            lines = [line for line in str(first).splitlines() if line.strip()]
            reason = lines[-1] if lines else 'unknown error'
            raise EdgegenError(f"cannot compile {path} for the NPU: {reason}") from None


class OpenVINONPUSession(CachePosition, EmbeddingInputs):
    """A Session (runtimes.base) over the stateful IR compiled for the NPU through NPUW.

    ``max_prompt_length`` tokens at most in the first call, then ``max_step`` tokens per call: a longer
    forward after the prompt (a chat turn's new suffix, a drafter catching up) is run in calls of that size.
    ``static_shapes``: the profile's, for what the export does not record. ``npuw_devices``: where NPUW places
    the graph's pieces (default $EDGEGEN_NPUW_DEVICES; "CPU" runs the NPU path without an NPU).
    """

    backend = "openvino"
    prefill_chunk = 1 << 62  # the prefill graph takes the whole prompt in one call (strategies.base.prefill)

    def __init__(self, folder: Path, manifest: Manifest, device: str = "NPU", max_length: int | None = None,
                 threads: int | None = None, npuw_devices: str | None = None, embeddings: bool = False,
                 static_shapes: dict[str, int] | None = None) -> None:
        npuw_devices = npuw_devices or os.environ.get(NPUW_ENV) or None
        if "NPU" not in available_devices() and not npuw_devices:
            raise EdgegenError(f"device 'NPU' is not present: OpenVINO has {', '.join(available_devices())} "
                               f"(set {NPUW_ENV}=CPU to run the NPU graph on the CPU)")
        graph = manifest.embeddings_graph("openvino") if embeddings else manifest.graph("openvino")
        if not graph.kv.stateful:
            raise EdgegenError(f"{folder}: the OpenVINO backend needs a stateful IR; re-export the model")
        shapes = npu_shapes(manifest, static_shapes)
        self.manifest, self.device, self.static_shapes = manifest, "NPU", shapes
        self.row_noise = ROW_NOISE_CPU if on_cpu(npuw_devices) else ROW_NOISE_NPU
        self._max_prompt, self._step = shapes["max_prompt_len"], shapes["max_generation_len"]
        self._limit = shapes["max_prompt_len"] + shapes["min_response_len"]
        if max_length is not None:
            self._limit = min(self._limit, max_length)
        compiled = _compile(folder / graph.path, npuw_config(shapes, npuw_devices))
        self._request = compiled.create_infer_request()
        if embeddings:
            self._open_embeddings(folder, manifest)
        names = graph.inputs
        self._input_name = names["inputs_embeds" if embeddings else "input_ids"]
        self._mask_name, self._positions_name = names["attention_mask"], names["position_ids"]
        self._beam_name = names["beam_idx"]
        self._beam_idx = np.zeros(1, np.int32)
        self._positions = np.arange(self._limit, dtype=np.int64).reshape(1, -1)  # position_ids are views of it
        self._mask = np.zeros((1, self._limit + self._step), np.int64)  # see the module docstring
        self._written = 0  # the highest slot count NPUW has written since the prefill
        self._logits_port = compiled.output(graph.logits)
        self.reset()

    @property
    def max_prompt_length(self) -> int:
        """Tokens the first forward (the prefill graph) takes at most."""
        return self._max_prompt

    @property
    def max_step(self) -> int:
        """Tokens one forward after the prompt takes in one NPU call (NPUW's generation step length)."""
        return self._step

    def _forward(self, x: np.ndarray, last_only: bool) -> np.ndarray:
        n, start = x.shape[1], self._position
        if start + n > self._limit:
            raise EdgegenError(f"sequence of {start + n} tokens exceeds this NPU session's maximum of {self._limit}")
        if start == 0:
            if n > self._max_prompt:
                raise EdgegenError(f"prompt of {n} tokens exceeds the NPU graph's {self._max_prompt} "
                                   "(the profile's max_prompt_len)")
            return self._call(x, last_only)
        rows = [self._call(x[:, i : i + self._step], last_only) for i in range(0, n, self._step)]
        return rows[-1] if last_only or len(rows) == 1 else np.concatenate(rows)

    def _call(self, x: np.ndarray, last_only: bool) -> np.ndarray:
        """One NPU call at the current position; its rows' logits (the last one when ``last_only``)."""
        n, start = x.shape[1], self._position
        end = start + n
        past = max(self._written, start) if start else 0  # slots start..past-1 hold rejected tokens: masked out
        mask = self._mask[:, : past + n]
        mask[0, :start], mask[0, start:past], mask[0, past:] = 1, 0, 1
        inputs = {
            self._input_name: x,
            self._mask_name: mask,
            self._positions_name: self._positions[:, start:end],
            self._beam_name: self._beam_idx,
        }
        outputs = self._request.infer(inputs, share_inputs=True, share_outputs=True)
        self._position, self._written = end, max(past, end)
        logits = outputs[self._logits_port][0]  # a fixed number of rows, the real ones last
        if not last_only and len(logits) < n:
            raise EdgegenError(f"the NPU prefill graph returns logits for its last {len(logits)} rows only")
        return np.array(logits[-1:] if last_only else logits[len(logits) - n :], np.float32)

    def trim(self, length: int) -> None:
        if self._check_trim(length):
            self._held(length)
            self._position = length  # the next call's position_ids make NPUW write from here

    def reset(self) -> None:
        self._request.reset_state()
        self._held(0)
        self._position = self._written = 0
