"""What a bench engine is (``EngineSpec``) and how one is opened (``open_engine``).

An ``EngineSpec`` is the one description of an engine that every part of the bench carries: the
timing loop runs it, the report reads its kind, strategy and options to pick ratios and token
references, and a child process can re-open it from the spec alone (peak RSS). Nothing is ever
parsed back out of the label, which is only the row's name in the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgegen.runtimes.baselines import TokenCallback, TokenEngine

EDGEGEN_BACKENDS = ("onnxruntime", "openvino")
# An engine's metric: when its first token was decided (time.perf_counter), for a strategy that releases its
# tokens only at the end (superposed ranks its drafts last); the timing loop counts decode from there.
FIRST_TOKEN_AT = "first_token_at"
DEFAULT_STRATEGY = "auto"  # what edgegen.load() + generate() run when the caller names none
SHORT_BACKEND = {"onnxruntime": "ort", "openvino": "ov"}


@dataclass(frozen=True)
class EngineSpec:
    """One engine of a bench run.

    kind "edgegen": edgegen through ``edgegen.load`` (``backend`` None: the backend load() picks, the
    headline row); kind "anchor": a reference runtime (``runtimes.baselines``). ``options`` are the
    strategy's options plus, for edgegen, load() arguments (``consistent_rows``, ``draft``) and
    sampling settings; ``model`` names the model within the run when several are compared ("" for one).
    """

    label: str
    kind: Literal["edgegen", "anchor"]
    backend: str | None
    weights: str
    folder: Path
    strategy: str = "ar"
    options: Mapping[str, Any] = field(default_factory=dict)
    model: str = ""

    @property
    def is_anchor(self) -> bool:
        return self.kind == "anchor"

    @property
    def is_headline(self) -> bool:
        """What a user gets from ``edgegen.load()`` and ``generate()`` with no settings."""
        return self.kind == "edgegen" and self.backend is None and self.strategy == DEFAULT_STRATEGY

    @property
    def drafts(self) -> bool:
        """Runs a drafting strategy (its tokens must equal AR's; its speed is compared with AR's)."""
        return self.strategy not in ("ar", DEFAULT_STRATEGY)

    @property
    def padded(self) -> bool:
        """edgegen AR with every single-row step computed as two rows (the drafting strategies' numerics)."""
        return bool(self.options.get("consistent_rows"))


def edgegen_spec(folder: Path, backend: str | None, weights: str, strategy: str = "ar", label: str | None = None,
                 model: str = "", **options: Any) -> EngineSpec:
    """An edgegen engine, labelled edgegen-<ort|ov>[-<strategy>][-2row] unless ``label`` is given."""
    if label is None:
        label = "edgegen-default" if backend is None else f"edgegen-{SHORT_BACKEND.get(backend, backend)}"
        if strategy not in ("ar", DEFAULT_STRATEGY):
            label += f"-{strategy}"
        elif options.get("consistent_rows"):
            label += "-2row"
    return EngineSpec(label, "edgegen", backend, weights, Path(folder), strategy, dict(options), model)


class EdgegenEngine:
    """One edgegen strategy on one backend, greedy, exactly ``new_tokens`` tokens (EOS ignored).

    It loads the model with ``edgegen.load`` and drives the same strategy, sampler and session that
    ``Generator.generate`` uses, from token ids, reporting each token as its step returns it. The
    default strategy ("auto") is resolved by asking the API which strategy it ran on a one-token call.
    """

    def __init__(self, spec: EngineSpec, device: str = "CPU") -> None:
        import edgegen

        self.spec = spec
        self.name = spec.label
        options = dict(spec.options)
        load_args = {key: options.pop(key) for key in ("consistent_rows", "draft", "draft_device") if key in options}
        if spec.strategy != "speculative":
            load_args.pop("draft", None)
        self._gen = edgegen.load(spec.folder, backend=spec.backend, device=device, **load_args)
        self.backend = self._gen.backend
        self._options = options
        self.strategy = spec.strategy
        if spec.strategy == DEFAULT_STRATEGY:
            probe = self._gen.generate([int(self._gen.manifest.eos_token_ids[0])], max_new_tokens=1, chat=False)
            self.strategy = probe.stats.strategy

    def generate(self, prompt_ids: list[int], new_tokens: int, on_token: TokenCallback) -> dict[str, float]:
        from edgegen.sampling import Sampler, SamplingConfig
        from edgegen.strategies import DecodeRequest, make_strategy

        decoder = make_strategy(self.strategy, self._gen.drafter, **self._options)
        request = DecodeRequest(self._gen.session_for(decoder), list(prompt_ids), Sampler(SamplingConfig()),
                                new_tokens, model_folder=self._gen.folder)
        steps = decoder.decode(request)
        produced, first_decided = 0, None
        try:
            for new in steps:
                first_decided = first_decided or time.perf_counter()  # superposed yields [] until all are ranked
                for token in new[: new_tokens - produced]:
                    on_token(token)
                produced += min(len(new), new_tokens - produced)
                if produced >= new_tokens:
                    break
        finally:
            steps.close()
        c = request.counters
        return {FIRST_TOKEN_AT: first_decided or 0.0,
                "prefill_ms": c.prefill_s * 1e3, "target_ms": c.target_s * 1e3, "target_steps": c.target_steps,
                "draft_ms": c.draft_s * 1e3, "draft_proposed": c.draft_proposed, "draft_accepted": c.draft_accepted,
                **c.extra}  # the strategy's own figures (hydra: per-head counts)


def open_engine(spec: EngineSpec, device: str = "CPU") -> TokenEngine:
    """The runnable engine ``spec`` describes (edgegen or an anchor)."""
    if spec.kind == "edgegen":
        return EdgegenEngine(spec, device)
    from edgegen.runtimes.baselines import open_anchor

    return open_anchor(spec.label, spec.folder, device, spec.strategy, **spec.options)


def anchor_specs(folder: Path, weights: str, strategy: str = "ar",
                 draft: Path | None = None) -> tuple[list[EngineSpec], list[str]]:
    """Every installed anchor's AR engine and, where it has one, its own ``strategy`` pipeline; plus notes."""
    from edgegen.runtimes.baselines import anchor_modes

    modes, notes = anchor_modes(strategy)
    specs = [EngineSpec(label, "anchor", backend, weights, Path(folder), mode,
                        {"draft": draft} if mode == "speculative" else {})
             for label, backend, mode in modes]
    return specs, notes


def open_engines(specs: list[EngineSpec], device: str = "CPU", note: Any = print,
                 skipped: list[tuple[EngineSpec, str]] | None = None,
                 opener: Callable[[EngineSpec, str], TokenEngine] | None = None,
                 ) -> list[tuple[EngineSpec, TokenEngine]]:
    """Open every spec with ``opener`` (default ``open_engine``; the bench passes bench.isolated.IsolatedEngine);
    one that cannot load is skipped with a one-line note (the others still run), and with its reason in
    ``skipped`` when given (the report shows it as a row)."""
    from edgegen.errors import EdgegenError

    opener = opener or open_engine
    opened = []
    for spec in specs:
        try:
            opened.append((spec, opener(spec, device)))
            continue
        except (EdgegenError, ImportError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        except Exception as e:  # an anchor that cannot load this folder must not stop the bench
            if not spec.is_anchor:
                raise
            reason = f"cannot load {spec.folder}: {type(e).__name__}: {e}".splitlines()[0]
        note(f"{spec.label}: {reason}, skipped")
        if skipped is not None:
            skipped.append((spec, reason))
    return opened
