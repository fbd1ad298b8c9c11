"""Benchmark engines and the one timing loop they all share.

Every engine (edgegen on each backend, every baseline) implements ``runtimes.baselines.TokenEngine``:
``generate(prompt_ids, new_tokens, on_token)`` reports each new token through ``on_token``. ``measure``
wraps that callback in one clock, so TTFT and decode rate mean the same thing for every engine:
TTFT = call start to first token; decode rate = (tokens - 1) / (first token to last token).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.manifest import Manifest, is_model_folder, read_manifest
from edgegen.runtimes.baselines import TokenCallback, TokenEngine

PROMPT_SETS = ("code", "chat")
EDGEGEN_BACKENDS = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt: raw text (``chat`` False) or a user message for the chat template."""

    id: str
    prompt: str
    chat: bool
    category: str  # the prompt set it came from: "code" | "chat"


@dataclass
class Timing:
    """One measured generation."""

    tokens: list[int]
    ttft_s: float  # call start to first token
    decode_s: float  # first token to last token
    engine_metrics: dict[str, float] = field(default_factory=dict)  # the engine's own figures

    @property
    def tokens_per_s(self) -> float:
        """Decode rate: (tokens - 1) / decode time (the first token belongs to TTFT)."""
        return (len(self.tokens) - 1) / self.decode_s if len(self.tokens) > 1 and self.decode_s > 0 else 0.0


@dataclass
class Run:
    """One engine on one prompt at one precision (one repeat)."""

    engine: str
    backend: str
    weights: str
    prompt_id: str
    category: str
    prompt_tokens: int
    repeat: int
    timing: Timing


def load_prompts(which: str = "all", limit: int | None = None) -> list[Prompt]:
    """The packaged prompt sets: "code", "chat" or "all"; ``limit`` keeps the first N of each set."""
    names = PROMPT_SETS if which == "all" else (which,)
    if any(n not in PROMPT_SETS for n in names):
        raise EdgegenError(f"unknown prompt set '{which}' (known: {', '.join(PROMPT_SETS)}, all)")
    prompts = []
    for name in names:
        text = resources.files("edgegen.bench").joinpath("prompts", f"{name}.jsonl").read_text()
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        prompts += [Prompt(r["id"], r["prompt"], bool(r["chat"]), name) for r in rows[:limit]]
    return prompts


def measure(engine: TokenEngine, prompt_ids: list[int], new_tokens: int) -> Timing:
    """THE timing loop: run ``engine`` once and time its tokens with one clock."""
    stamps: list[float] = []
    tokens: list[int] = []

    def on_token(token: int) -> None:
        stamps.append(time.perf_counter())
        tokens.append(token)

    start = time.perf_counter()
    metrics = engine.generate(list(prompt_ids), new_tokens, on_token)
    if len(tokens) != new_tokens:
        raise EdgegenError(f"{engine.name} produced {len(tokens)} tokens, expected {new_tokens}")
    return Timing(tokens, stamps[0] - start, stamps[-1] - stamps[0], dict(metrics or {}))


class EdgegenEngine:
    """One edgegen strategy on one backend, greedy, exactly ``new_tokens`` tokens (EOS ignored).

    It drives the same strategy, sampler and session that ``Generator.generate`` uses, but from
    token ids and without stopping at EOS. ``consistent_rows`` (always on for speculative strategies)
    makes single-token forwards use the multi-row kernels, so AR and speculative tokens can be compared.
    """

    def __init__(self, folder: Path, backend: str, device: str = "CPU", strategy: str = "ar",
                 draft: Path | None = None, consistent_rows: bool = False, **options: Any) -> None:
        import edgegen

        self.backend = backend
        self.strategy = strategy
        self._options = options
        consistent_rows = consistent_rows or strategy != "ar"
        name = f"edgegen-{'ort' if backend == 'onnxruntime' else 'ov'}"
        if strategy != "ar":
            name += f"-{strategy}"
        elif consistent_rows and backend == "onnxruntime":  # OpenVINO's rows agree anyway
            name += "-2row"
        self.name = name
        self._gen = edgegen.load(folder, draft=draft if strategy == "speculative" else None, backend=backend,
                                 device=device, consistent_rows=consistent_rows)

    def generate(self, prompt_ids: list[int], new_tokens: int, on_token: TokenCallback) -> dict[str, float]:
        from edgegen.sampling import Sampler, SamplingConfig
        from edgegen.strategies import DecodeRequest, make_strategy

        request = DecodeRequest(self._gen.session, list(prompt_ids), Sampler(SamplingConfig()), new_tokens)
        steps = make_strategy(self.strategy, self._gen.drafter, **self._options).decode(request)
        produced = 0
        try:
            for new in steps:
                for token in new[: new_tokens - produced]:
                    on_token(token)
                produced += min(len(new), new_tokens - produced)
                if produced >= new_tokens:
                    break
        finally:
            steps.close()
        c = request.counters
        return {"prefill_ms": c.prefill_s * 1e3, "target_ms": c.target_s * 1e3, "target_steps": c.target_steps,
                "draft_ms": c.draft_s * 1e3, "draft_proposed": c.draft_proposed, "draft_accepted": c.draft_accepted}


def _folder_weights(manifest: Manifest) -> str:
    found = sorted({g.weights for g in manifest.graphs.values()})
    return "/".join(found)


def exported_folder(model: str | None) -> Path | None:
    """``model`` as an exported folder (has edgegen.json) to use as is, else None (it must be exported)."""
    if model in (None, "default"):
        return None
    path = Path(model).expanduser()
    return path if is_model_folder(path) else None


def folder_weights(folder: Path) -> str:
    """The precision of an exported folder's graphs (e.g. "int8"; "fp32/int8" if they differ)."""
    return _folder_weights(read_manifest(folder))


def prepare_folder(model: str | None, weights: str) -> Path:
    """An exported folder with both graph formats at ``weights`` for the default model, an HF folder or
    a .gguf: exported once into ``cache_dir()/bench/<name>-<weights>`` and reused afterwards."""
    from edgegen.models import DEFAULT_MODEL_NAME, cache_dir

    source = None if model in (None, "default") else str(Path(model).expanduser())
    if source is not None and not Path(source).exists():
        raise EdgegenError(f"model not found: {model}")
    name = DEFAULT_MODEL_NAME if source is None else Path(source).stem
    out = cache_dir() / "bench" / f"{name}-{weights}"
    if is_model_folder(out):
        return out
    from edgegen.models import export

    print(f"edgegen bench: exporting {name} at {weights} to {out} (once)", file=sys.stderr)
    # Symmetric weights (the cpu profile's choice: ONNX int8 ppl x1.005 vs x1.021 asymmetric); int4 in
    # groups of 32, since 128-wide groups cost a 135M model >20% perplexity.
    return export(source, out, formats=("onnx", "openvino"), weights=weights, sym=True,
                  group_size=32 if weights == "int4" else None)


def encode_prompts(folder: Path, prompts: Sequence[Prompt]) -> dict[str, list[int]]:
    """Token ids of every prompt (chat template applied where ``chat``), with the folder's tokenizer."""
    from edgegen.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(folder, read_manifest(folder))
    return {p.id: tokenizer.encode_prompt(p.prompt, p.chat) for p in prompts}


def open_engines(folder: Path, baselines: bool, device: str = "CPU", note: Callable[[str], None] = print,
                 strategy: str = "ar", draft: Path | None = None, **options: Any) -> list[TokenEngine]:
    """edgegen on each backend whose graph the folder has, then the baselines (skips noted in one line).

    For a speculative ``strategy`` the engines are, per backend: edgegen AR (the speed reference),
    edgegen AR with consistent rows on ONNX Runtime (the token reference) and edgegen ``strategy``;
    then each baseline's AR and, where it has one, its own ``strategy`` pipeline.
    """
    from edgegen.runtimes.baselines import open_baselines

    graphs = read_manifest(folder).graphs
    variants: list[dict[str, Any]] = [{}]
    if strategy != "ar":
        variants = [{}, {"consistent_rows": True}, {"strategy": strategy, "draft": draft, **options}]
    engines: list[TokenEngine] = []
    for backend in EDGEGEN_BACKENDS:
        fmt = "onnx" if backend == "onnxruntime" else "openvino"
        if fmt not in graphs:
            note(f"edgegen on {backend}: {folder} has no {fmt} graph, skipped")
            continue
        for variant in variants:
            if variant.get("consistent_rows") and backend != "onnxruntime":
                continue
            try:
                engines.append(EdgegenEngine(folder, backend, device, **variant))
            except (EdgegenError, ImportError) as e:
                note(f"edgegen on {backend}: {e}, skipped")
    if baselines:
        opened, notes = open_baselines(folder, device, strategy, draft)
        engines += opened
        for line in notes:
            note(line)
    return engines


def run_precision(weights: str, folder: Path, prompts: Sequence[Prompt], new_tokens: int, repeats: int,
                  warmup: int, baselines: bool, note: Callable[[str], None] = print, strategy: str = "ar",
                  draft: Path | None = None, **options: Any) -> list[Run]:
    """Every engine on every prompt at one precision: warm-up runs first, then the timed runs."""
    from tqdm import tqdm

    ids = encode_prompts(folder, prompts)
    engines = open_engines(folder, baselines, note=note, strategy=strategy, draft=draft, **options)
    runs: list[Run] = []
    total = len(engines) * (warmup + len(prompts) * repeats)
    with tqdm(total=total, desc=f"bench {weights}", unit="run", file=sys.stderr, leave=False) as bar:
        for engine in engines:
            for i in range(warmup):
                bar.set_postfix_str(f"{engine.name} warm-up")
                measure(engine, ids[prompts[i % len(prompts)].id], new_tokens)
                bar.update()
        # Engines take turns on each prompt, so a load change on a shared machine hits them all alike.
        for prompt in prompts:
            for r in range(repeats):
                for engine in engines:
                    bar.set_postfix_str(f"{engine.name} {prompt.id}")
                    timing = measure(engine, ids[prompt.id], new_tokens)
                    runs.append(Run(engine.name, engine.backend, weights, prompt.id, prompt.category,
                                    len(ids[prompt.id]), r, timing))
                    bar.update()
    return runs


def median(values: Sequence[float]) -> float:
    """Median, 0.0 for no values."""
    return statistics.median(values) if values else 0.0
