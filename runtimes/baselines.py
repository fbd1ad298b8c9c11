"""Reference runtimes the benchmark compares edgegen against: openvino-genai and onnxruntime-genai.

Both are driven with token ids (no tokenizer involved), greedy, for exactly ``new_tokens`` tokens
(EOS does not stop them). Every adapter implements ``TokenEngine``: it calls ``on_token`` once per
new token, as soon as that token exists, so the caller times all engines with one clock.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
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

    def generate(self, prompt_ids: list[int], new_tokens: int, on_token: TokenCallback) -> dict[str, float]:
        og = self._og
        params = og.GeneratorParams(self._model)
        total = len(prompt_ids) + new_tokens
        # min_length keeps EOS from ending the run early (it masks EOS until then).
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = og.Generator(self._model, params)
        generator.append_tokens(prompt_ids)
        for _ in range(new_tokens):
            generator.generate_next_token()
            on_token(int(generator.get_next_tokens()[0]))
        del generator
        return {}


# name -> (module that must import, adapter class)
BASELINES: dict[str, tuple[str, type]] = {
    "openvino-genai": ("openvino_genai", OpenVINOGenAIBaseline),
    OnnxRuntimeGenAIBaseline.name: ("onnxruntime_genai", OnnxRuntimeGenAIBaseline),
}
# speculative strategies a baseline runs with its own pipeline, besides AR
SPECULATIVE_BASELINES = {"openvino-genai": ("speculative", "prompt-lookup")}


def open_baselines(folder: Path, device: str = "CPU", strategy: str = "ar",
                   draft: Path | None = None) -> tuple[list[TokenEngine], list[str]]:
    """Open every baseline that is installed and can load ``folder``: each one's AR pipeline and,
    where it has one, its own ``strategy`` pipeline (with ``draft`` for "speculative").

    Returns (engines, notes): one short line per baseline that was skipped and why.
    """
    engines: list[TokenEngine] = []
    notes: list[str] = []
    for name, (module, adapter) in BASELINES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            notes.append(f"{name}: not installed ({module.replace('_', '-')}), skipped")
            continue
        modes: list[dict[str, Any]] = [{}]
        if strategy != "ar":
            if strategy in SPECULATIVE_BASELINES.get(name, ()):
                modes.append({"strategy": strategy, "draft": draft})
            else:
                notes.append(f"{name}: has no '{strategy}' strategy; AR only")
        for mode in modes:
            try:
                engines.append(adapter(folder, device, **mode))
            except Exception as e:  # a baseline that cannot load this folder must not stop the bench
                label = f"{name} {mode.get('strategy', '')}".strip()
                notes.append(f"{label}: cannot load {folder}: {type(e).__name__}: {e}".splitlines()[0])
    return engines, notes


def versions() -> dict[str, str]:
    """Installed versions of the runtimes and baselines (without importing them)."""
    found = {}
    for dist in ("onnxruntime", "openvino", "onnxruntime-genai", "openvino-genai", "openvino-tokenizers"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found
