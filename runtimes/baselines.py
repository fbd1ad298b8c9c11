"""Reference runtimes the benchmark compares edgegen against: openvino-genai and onnxruntime-genai.

Both are driven with token ids (no tokenizer involved), greedy, for exactly ``new_tokens`` tokens
(EOS does not stop them); openvino-genai's chat mode (``chat_mode``) is driven with text, as its users
do. Every adapter implements ``TokenEngine``: it calls ``on_token`` once per new token, as soon as that
token exists, so the caller times all engines with one clock.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

TokenCallback = Callable[[int], None]


class TokenEngine(Protocol):
    """Something that generates greedily from token ids, reporting each new token as it appears."""

    name: str  # e.g. "openvino-genai"
    backend: str  # "onnxruntime" | "openvino": which graph of the model folder it runs

    def generate(self, prompt_ids: list[int], new_tokens: int, on_token: TokenCallback) -> dict[str, float]:
        """Generate exactly ``new_tokens`` tokens after ``prompt_ids``, calling ``on_token`` for each.

        Returns the engine's own metrics (may be empty), e.g. {"ttft_ms": ..., "tokens_per_s": ...}.
        """
        ...


class OpenVINOGenAIBaseline:
    """openvino-genai ``LLMPipeline`` over the folder's OpenVINO IR, fed token ids.

    strategy "ar" (its stateful pipeline), "speculative" (``draft_model`` with ``draft``'s IR) or
    "prompt-lookup"; both speculative modes propose ``num_assistant_tokens`` per step, as its samples do.
    """

    backend = "openvino"

    def __init__(self, folder: Path, device: str = "CPU", strategy: str = "ar", draft: Path | None = None,
                 num_assistant_tokens: int = 5, max_ngram_size: int = 3) -> None:
        import openvino as ov
        import openvino_genai as ovg

        self._ov, self._ovg = ov, ovg
        self.name = "openvino-genai" if strategy == "ar" else f"openvino-genai-{strategy}"
        self._assist: dict[str, int] = {}
        extra: dict[str, Any] = {}
        if strategy == "speculative":
            if draft is None:
                raise ValueError("speculative needs a draft model folder")
            extra["draft_model"] = ovg.draft_model(str(Path(draft) / "openvino"), device)
            self._assist = {"num_assistant_tokens": num_assistant_tokens}
        elif strategy == "prompt-lookup":
            extra["prompt_lookup"] = True
            self._assist = {"num_assistant_tokens": num_assistant_tokens, "max_ngram_size": max_ngram_size}
        elif strategy != "ar":
            raise ValueError(f"openvino-genai has no '{strategy}' strategy")
        if device.upper() == "NPU":  # the NPUW LLM pipeline, at the static shapes edgegen's NPU session uses
            extra |= _npu_properties(Path(folder))
            if "draft_model" in extra:  # the drafter on the CPU, as the NPU profile places edgegen's
                extra["draft_model"] = ovg.draft_model(str(Path(draft) / "openvino"), "CPU")
        self._pipe = ovg.LLMPipeline(str(Path(folder) / "openvino"), device, **extra)

    def generate(self, prompt_ids: list[int], new_tokens: int, on_token: TokenCallback) -> dict[str, float]:
        import numpy as np

        ovg = self._ovg
        config = ovg.GenerationConfig()
        config.max_new_tokens = new_tokens
        config.do_sample = False
        config.ignore_eos = True
        for key, value in self._assist.items():
            setattr(config, key, value)
        ids = np.asarray([prompt_ids], np.int64)
        inputs = ovg.TokenizedInputs(self._ov.Tensor(ids), self._ov.Tensor(np.ones_like(ids)))
        result = self._pipe.generate(inputs, config, _token_streamer(ovg, on_token))
        metrics = result.perf_metrics
        return {"ttft_ms": float(metrics.get_ttft().mean), "tokens_per_s": float(metrics.get_throughput().mean)}


    @contextmanager
    def chat_mode(self) -> Iterator[Callable[[str, int, TokenCallback], None]]:
        """openvino-genai's chat mode (start_chat .. finish_chat): yields ``turn(user_text, max_new_tokens,
        on_token)``, which answers one user message greedily (up to EOS) with the pipeline keeping the history
        and its KV cache between turns. Needs the folder's openvino_tokenizer.xml (text in, template applied)."""
        config = self._ovg.GenerationConfig()
        config.do_sample = False

        def turn(text: str, max_new_tokens: int, on_token: TokenCallback) -> None:
            config.max_new_tokens = max_new_tokens
            self._pipe.generate(text, config, _token_streamer(self._ovg, on_token))

        self._pipe.start_chat()
        try:
            yield turn
        finally:
            self._pipe.finish_chat()


def _npu_properties(folder: Path) -> dict[str, Any]:
    """openvino-genai's NPU pipeline properties for ``folder``: its static shapes and NPUW's devices
    ($EDGEGEN_NPUW_DEVICES; CPU runs the NPU path without an NPU)."""
    import os

    from edgegen.manifest import read_manifest
    from edgegen.runtimes.openvino_npu import NPUW_ENV, npu_shapes, npuw_device_properties

    shapes = npu_shapes(read_manifest(folder))
    props: dict[str, Any] = {"MAX_PROMPT_LEN": shapes["max_prompt_len"], "MIN_RESPONSE_LEN": shapes["min_response_len"]}
    return props | npuw_device_properties(os.environ.get(NPUW_ENV))


def _token_streamer(ovg: Any, on_token: TokenCallback) -> Any:
    """An openvino-genai streamer that hands token ids (not text) to ``on_token``."""

    class _Streamer(ovg.StreamerBase):
        def write(self, token: int | list[int]) -> Any:
            for t in token if isinstance(token, list) else [token]:
                on_token(int(t))
            return ovg.StreamingStatus.RUNNING

        def end(self) -> None:
            pass

    return _Streamer()


class OnnxRuntimeGenAIBaseline:
    """onnxruntime-genai ``Generator`` over the folder's ONNX graph (needs onnx/genai_config.json); AR only."""

    name = "onnxruntime-genai"
    backend = "onnxruntime"

    def __init__(self, folder: Path, device: str = "CPU") -> None:
        import onnxruntime_genai as og

        if device.upper() != "CPU":
            raise RuntimeError("the onnxruntime-genai baseline runs on CPU only here")
        config = Path(folder) / "onnx" / "genai_config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{config} is missing (export with the onnxruntime-genai builder)")
        self._og = og
        self._model = og.Model(str(Path(folder) / "onnx"))
        # A sliding-window model (Gemma) needs a KV cache of at least the window: max_length below it is refused.
        decoder = json.loads(config.read_text()).get("model", {}).get("decoder", {})
        self._min_capacity = int((decoder.get("sliding_window") or {}).get("window_size") or 0)

    def generate(self, prompt_ids: list[int], new_tokens: int, on_token: TokenCallback) -> dict[str, float]:
        og = self._og
        params = og.GeneratorParams(self._model)
        total = len(prompt_ids) + new_tokens
        # min_length keeps EOS from ending the run early (it masks EOS until then); the loop stops at total.
        params.set_search_options(max_length=max(total, self._min_capacity), min_length=total, do_sample=False)
        generator = og.Generator(self._model, params)
        generator.append_tokens(prompt_ids)
        for _ in range(new_tokens):
            generator.generate_next_token()
            on_token(int(generator.get_next_tokens()[0]))
        del generator
        return {}


# label -> (module that must import, adapter class)
BASELINES: dict[str, tuple[str, type]] = {
    "openvino-genai": ("openvino_genai", OpenVINOGenAIBaseline),
    OnnxRuntimeGenAIBaseline.name: ("onnxruntime_genai", OnnxRuntimeGenAIBaseline),
}
# speculative strategies a baseline runs with its own pipeline, besides AR
SPECULATIVE_BASELINES = {"openvino-genai": ("speculative", "prompt-lookup")}


def anchor_modes(strategy: str = "ar") -> tuple[list[tuple[str, str, str]], list[str]]:
    """(label, backend, strategy) of every installed anchor's AR pipeline and, where it has one, its own
    ``strategy`` pipeline; plus one short note per anchor that is skipped or runs AR only."""
    modes: list[tuple[str, str, str]] = []
    notes: list[str] = []
    for name, (module, adapter) in BASELINES.items():
        if importlib.util.find_spec(module) is None:
            notes.append(f"{name}: not installed ({module.replace('_', '-')}), skipped")
            continue
        modes.append((name, adapter.backend, "ar"))
        if strategy != "ar":
            if strategy in SPECULATIVE_BASELINES.get(name, ()):
                modes.append((f"{name}-{strategy}", adapter.backend, strategy))
            else:
                notes.append(f"{name}: has no '{strategy}' strategy; AR only")
    return modes, notes


def open_anchor(label: str, folder: Path, device: str = "CPU", strategy: str = "ar", **options: Any) -> TokenEngine:
    """Open the anchor ``anchor_modes`` called ``label`` over ``folder`` (``options``: e.g. draft)."""
    for name, (_, adapter) in BASELINES.items():
        if label == name or label == f"{name}-{strategy}":
            modes = {"strategy": strategy, **options} if strategy != "ar" else {}
            engine = adapter(folder, device, **modes)
            engine.name = label
            return engine
    raise ValueError(f"unknown anchor '{label}'")


def versions() -> dict[str, str]:
    """Installed versions of the runtimes and baselines (without importing them)."""
    found = {}
    for dist in ("onnxruntime", "openvino", "onnxruntime-genai", "openvino-genai", "openvino-tokenizers"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found
