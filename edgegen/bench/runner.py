"""The bench core: prompts, the one clock (``measure``), the one take-turns loop and the model folders.

Every engine (edgegen on each backend, every anchor) implements ``runtimes.baselines.TokenEngine``:
``generate(prompt_ids, new_tokens, on_token)`` reports each new token through ``on_token``. ``measure``
wraps that callback in one clock, so TTFT and decode rate mean the same thing for every engine:
TTFT = call start to first token; decode rate = (tokens - 1) / (first token to last token).
``take_turns`` runs every engine on every prompt, engines alternating per prompt, under each background
load asked for; the strategy benches (superposed, lud) supply only their engines and what one trial does.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Generic, TypeVar

from edgegen.bench.engines import EDGEGEN_BACKENDS, FIRST_TOKEN_AT, EngineSpec
from edgegen.bench.load import background_load
from edgegen.errors import EdgegenError
from edgegen.manifest import is_model_folder, read_manifest
from edgegen.runtimes.baselines import TokenEngine

PROMPT_SETS = ("code", "chat")
E = TypeVar("E")  # an opened engine
T = TypeVar("T")  # what one trial of it returns


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt: raw text (``chat`` False) or a user message for the chat template."""

    id: str
    prompt: str
    chat: bool
    category: str  # the prompt set it came from: "code" | "chat"


# Warm-up runs use their own prompt: a timed prompt seen in the warm-up would be served from a prefix cache
# (edgegen's prefill keeps what the session holds, openvino-genai caches prefixes) and flatter its TTFT.
WARMUP_PROMPT = Prompt("warm-up", "Write two sentences about the sea.", True, "warm-up")


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
    """One engine on one prompt (one repeat, under one background load)."""

    engine: EngineSpec
    backend: str  # the backend it ran on (the headline engine's is the one load() picked)
    prompt_id: str
    category: str
    prompt_tokens: int
    repeat: int
    timing: Timing
    load: str = "none"

    @property
    def label(self) -> str:
        return self.engine.label

    @property
    def weights(self) -> str:
        return self.engine.weights


@dataclass
class Turn(Generic[T]):
    """One trial of the take-turns loop: which engine, prompt, repeat and load, and what the trial returned."""

    engine: EngineSpec
    prompt: Prompt
    repeat: int
    load: str
    result: T


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
    timed = getattr(engine, "timed", None)  # an engine in a process of its own runs this loop there (isolated.py)
    if timed is not None:
        return timed(prompt_ids, new_tokens)
    stamps: list[float] = []
    tokens: list[int] = []

    def on_token(token: int) -> None:
        stamps.append(time.perf_counter())
        tokens.append(token)

    start = time.perf_counter()
    metrics = engine.generate(list(prompt_ids), new_tokens, on_token)
    if len(tokens) != new_tokens:
        raise EdgegenError(f"{engine.name} produced {len(tokens)} tokens, expected {new_tokens}")
    metrics = dict(metrics or {})
    first = min(metrics.pop(FIRST_TOKEN_AT, 0.0) or stamps[0], stamps[0])  # decided before it was released
    return Timing(tokens, first - start, stamps[-1] - first, metrics)


def exported_folder(model: str | None) -> Path | None:
    """``model`` as an exported folder (has edgegen.json) to use as is, else None (it must be exported)."""
    if model in (None, "default"):
        return None
    path = Path(model).expanduser()
    return path if is_model_folder(path) else None


def folder_weights(folder: Path) -> str:
    """The precision of an exported folder's graphs (e.g. "int8"; "fp32/int8" if they differ)."""
    return "/".join(sorted({g.weights for g in read_manifest(folder).graphs.values()}))


def prepare_folder(model: str | None, weights: str) -> Path:
    """An exported folder with both graph formats at ``weights`` for the default model, an HF folder or
    a .gguf: exported once into ``cache_dir()/bench/<name>-<weights>`` and reused afterwards."""
    from edgegen.artifacts import DEFAULT_MODEL_NAME
    from edgegen.cache import cache_dir

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


def take_turns(engines: Sequence[tuple[EngineSpec, E]], prompts: Sequence[Prompt], trial: Callable[[E, Prompt], T],
               warmup: int = 1, repeats: int = 1, loads: Sequence[str] = ("none",), desc: str = "bench",
               warmup_prompts: Sequence[Prompt] = ()) -> list[Turn[T]]:
    """THE take-turns loop: under each background load, every engine's warm-up trials (on ``warmup_prompts``,
    default the timed ones), then for every prompt and repeat one trial of each engine in turn, so a load
    change on a shared machine hits them all alike."""
    from tqdm import tqdm

    warmup_prompts = list(warmup_prompts) or list(prompts)
    turns: list[Turn[T]] = []
    total = len(loads) * len(engines) * (warmup + len(prompts) * repeats)
    with tqdm(total=total, desc=desc, unit="run", file=sys.stderr, leave=False) as bar:
        for load in loads:
            with background_load(load):
                for spec, engine in engines:
                    for i in range(warmup):
                        bar.set_postfix_str(f"{spec.label} warm-up ({load})")
                        trial(engine, warmup_prompts[i % len(warmup_prompts)])
                        bar.update()
                for prompt in prompts:
                    for r in range(repeats):
                        for spec, engine in engines:
                            bar.set_postfix_str(f"{spec.label} {prompt.id} ({load})")
                            turns.append(Turn(spec, prompt, r, load, trial(engine, prompt)))
                            bar.update()
    return turns


def timed_runs(engines: Sequence[tuple[EngineSpec, TokenEngine]], prompts: Sequence[Prompt],
               ids: Mapping[str, list[int]], new_tokens: int, warmup: int = 1, repeats: int = 1,
               loads: Sequence[str] = ("none",), desc: str = "bench",
               warmup_prompts: Sequence[Prompt] = (), failed: dict[str, str] | None = None) -> list[Run]:
    """``measure`` every engine on every prompt (``take_turns``): one Run per timed generation.

    An anchor that fails while generating (a model its runtime cannot run) is left out of the rest of the run and
    of the result, its one-line reason put in ``failed`` (label -> reason); edgegen's own failures propagate.
    """
    backend = {spec.label: engine.backend for spec, engine in engines}
    spec_of = {id(engine): spec for spec, engine in engines}
    failed = {} if failed is None else failed

    def trial(engine: TokenEngine, prompt: Prompt) -> Timing | None:
        spec = spec_of[id(engine)]
        if spec.label in failed:
            return None
        try:
            return measure(engine, ids[prompt.id], new_tokens)
        except Exception as e:
            if not spec.is_anchor:
                raise
            failed[spec.label] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            return None

    turns = take_turns(engines, prompts, trial, warmup, repeats, loads, desc, warmup_prompts)
    return [Run(t.engine, backend[t.engine.label], t.prompt.id, t.prompt.category, len(ids[t.prompt.id]), t.repeat,
                t.result, t.load) for t in turns if t.result is not None and t.engine.label not in failed]


def edgegen_specs(folder: Path, weights: str, strategy: str = "ar", draft: Path | None = None,
                  note: Callable[[str], None] = print, also: Sequence[str] = (), placements: Sequence[str] = (),
                  **options: object) -> list[EngineSpec]:
    """edgegen's engines on ``folder``: the headline (``edgegen.load()`` + the default strategy), then per backend
    whose graph the folder has: AR (the speed and token reference: every step computes its rows alike) and,
    for a drafting ``strategy``, the strategy itself (with ``options``) and the drafting strategies ``also``
    compared with it (their defaults). ``placements``: draft devices to run speculative decoding with besides
    the profile's (the NPU bench's placement table)."""
    from edgegen import runtimes
    from edgegen.bench.engines import DEFAULT_STRATEGY, edgegen_spec

    graphs = read_manifest(folder).graphs
    specs = [edgegen_spec(folder, None, weights, DEFAULT_STRATEGY)]
    for backend in EDGEGEN_BACKENDS:
        fmt = runtimes.graph_format(backend)
        if fmt not in graphs:
            note(f"edgegen on {backend}: {folder} has no {fmt} graph, skipped")
            continue
        specs.append(edgegen_spec(folder, backend, weights))
        if strategy == "ar":
            continue
        for name in (strategy, *also):
            extra = {"draft": draft} if name == "speculative" else {}
            specs.append(edgegen_spec(folder, backend, weights, name, **extra, **(options if name == strategy else {})))
            if name == "speculative":
                specs += [edgegen_spec(folder, backend, weights, name, f"{specs[-1].label}-draft-{where.lower()}",
                                       draft_device=where, **extra, **(options if name == strategy else {}))
                          for where in placements]
    return specs


def median(values: Sequence[float]) -> float:
    """Median, 0.0 for no values."""
    return statistics.median(values) if values else 0.0
