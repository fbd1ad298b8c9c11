"""``edgegen bench``: edgegen against openvino-genai and onnxruntime-genai on the same exported graphs.

    from edgegen.bench import run_bench
    rows = run_bench(weights=("int8", "int4"), prompts="all", new_tokens=128, out=Path("bench-out"))

Same prompts as token ids, greedy, exactly N new tokens per run (EOS ignored), warm-up first, engines
taking turns per prompt; the report gives median tokens/s and TTFT per engine, the ratio to the fastest
anchor at each precision and whether edgegen's tokens equal each anchor's. The headline row
(``edgegen-default``) is what ``edgegen.load()`` + the default strategy give a user. Options add runs
under a background load, peak RSS per engine, TTFT at fixed prompt lengths, a multi-turn chat bench and
AR speed as a fraction of the memory-bandwidth ceiling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgegen.artifacts import DEFAULT_DRAFT, default_drafter_model
from edgegen.bench.engines import EngineSpec, anchor_specs, open_engines
from edgegen.bench.isolated import IsolatedEngine
from edgegen.bench.report import Row, markdown_table, summarize, write_reports
from edgegen.bench.runner import (
    WARMUP_PROMPT,
    Prompt,
    Run,
    Timing,
    edgegen_specs,
    encode_prompts,
    exported_folder,
    folder_weights,
    load_prompts,
    measure,
    prepare_folder,
    timed_runs,
)
from edgegen.errors import EdgegenError
from edgegen.manifest import read_manifest

# The drafting strategies a bench of one strategy also runs, in the same take-turns loop: hydra against the
# shipped drafter (openvino-genai's speculative pipeline runs it too) and prompt lookup.
ALONGSIDE = {"hydra": ("speculative", "prompt-lookup")}


def run_bench(model: str | None = None, weights: Sequence[str] = (), prompts: str = "all",
              new_tokens: int = 128, repeats: int = 1, warmup: int = 1, baselines: bool = True,
              out: Path = Path("bench-out"), limit: int | None = None, command: str = "edgegen bench",
              echo: Callable[[str], None] = print, strategy: str = "ar", draft: str | None = None,
              loads: Sequence[str] = ("none",), peak_rss: bool = True, prompt_tokens: Sequence[int] = (),
              chat_turns: int = 0, chat_new_tokens: int = 64, device: str = "CPU", **options: Any) -> list[Row]:
    """Run the benchmark, write ``out``/bench.json, bench.md, bench.png, print the table; return its rows.

    model: None/"default" (SmolLM2, exported per precision into the cache), an exported folder (used
    at its own precision), or a Hugging Face folder / .gguf (exported per precision). weights: the
    precisions to export and compare (default int8; ignored for an exported folder). limit: the first
    N prompts of each set only (quick runs). strategy: "ar", or "speculative" (with ``draft``, an exported
    draft model folder; the default model's shipped drafter when omitted) / "prompt-lookup" to compare
    edgegen's speculative decoding with its own AR, the AR anchors and openvino-genai's pipeline for
    the same strategy; "hydra" also runs speculative (the shipped drafter) and prompt lookup
    (``ALONGSIDE``); ``options`` go to the strategy.
    loads: background loads to measure under ("none", "busy": one core spinning; ``bench.load``).
    peak_rss: each engine's peak RSS, read in its own process after the timed prompts (``bench.memory``).
    prompt_tokens: prompt lengths to measure TTFT at (``bench.ttft``). chat_turns: also run a chat of that
    many turns, edgegen's API against openvino-genai's chat mode (``bench.chat``).
    device: where the engines run. "NPU" (EDGEGEN_NPUW_DEVICES=CPU: the NPUW path on the CPU) runs an NPU export
    (the default model's core-ultra-npu auto-export, or ``model`` as exported), openvino-genai's NPU pipelines
    as anchors, speculative decoding with the drafter on each device (the placement table: docs/npu.md) and,
    with --strategy speculative, prompt lookup, superposed decoding (its first draft against AR) and the
    LUD-tuned default model's AR and lexical decoding (compared within that model);
    peak RSS, TTFT at lengths and the chat bench run on the CPU only.
    """
    from edgegen.bench.load import LOADS

    if new_tokens < 2:
        raise EdgegenError(f"--new-tokens must be >= 2 (the decode rate needs two tokens), got {new_tokens}")
    if repeats < 1 or warmup < 0:
        raise EdgegenError("--repeats must be >= 1 and --warmup >= 0")
    loads = list(dict.fromkeys(loads)) or ["none"]
    if any(load not in LOADS for load in loads):
        raise EdgegenError(f"unknown --load {'/'.join(loads)} (known: {', '.join(LOADS)})")
    if any(n < 1 for n in prompt_tokens) or chat_turns < 0 or chat_new_tokens < 1:
        raise EdgegenError("--prompt-tokens must be >= 1, --chat-turns >= 0 and --chat-new-tokens >= 1")
    also = [s for s in ALONGSIDE.get(strategy, ()) if s != "speculative" or draft is not None
            or model in (None, "default")]  # a drafter model to compare with: given, or the shipped one
    if "speculative" in (strategy, *also) and draft in (None, DEFAULT_DRAFT):
        if draft is None and model not in (None, "default"):
            raise EdgegenError("--strategy speculative needs --draft DIR (an exported draft model) for this model")
        draft = str(default_drafter_model())  # the drafter shipped with the default model
    if draft is not None and exported_folder(draft) is None:
        raise EdgegenError(f"draft model {draft} is not an exported model folder (no edgegen.json)")
    chosen = load_prompts(prompts, limit)
    device = device.upper()
    notes: list[str] = []

    def note(line: str) -> None:
        notes.append(line)
        echo(line)

    folder = exported_folder(model)
    placements: list[str] = []
    if device != "CPU":
        if peak_rss or prompt_tokens or chat_turns:
            echo(f"--device {device}: peak RSS, --prompt-tokens and --chat-turns run on the CPU only; left out")
        peak_rss, prompt_tokens, chat_turns = False, (), 0
        if folder is None:  # the default model's export for this device's profile (exported once)
            from edgegen.loading import DEVICE_PROFILES
            from edgegen.models import resolve_model
            from edgegen.profiles import load_profile

            folder = resolve_model(model, load_profile(DEVICE_PROFILES[device]))
        placements = [device]  # the drafter beside the target, besides the profile's placement (CPU)
        if strategy == "speculative":  # every drafting strategy on the target in one run
            also = [*also, "prompt-lookup", "superposed"]
    if folder is not None and weights and set(weights) != {folder_weights(folder)}:
        note(f"{folder} is exported at {folder_weights(folder)}: --weights {'/'.join(weights)} does not apply")
    bandwidth = _bandwidth()
    runs: list[Run] = []
    ttft: list[Run] = []
    rss: dict[tuple[str, str], float] = {}
    folders: dict[str, str] = {}
    skipped: list[tuple[EngineSpec, str]] = []  # engines that cannot run the model: rows with the reason
    quality: dict[str, dict[str, float]] = {}
    eos: set[int] = set()
    for precision in [folder_weights(folder)] if folder is not None else list(weights) or ["int8"]:
        try:
            path = folder if folder is not None else prepare_folder(model, precision)
        except Exception as e:  # one precision failing to export must not lose the others
            first_line = (str(e).splitlines() or [""])[0]
            note(f"{precision}: export failed, skipped ({type(e).__name__}: {first_line})")
            continue
        manifest = read_manifest(path)
        eos |= set(manifest.eos_token_ids)
        quality[precision] = {fmt: g.quality["ratio"] for fmt, g in manifest.graphs.items() if "ratio" in g.quality}
        folders[precision] = str(path)
        specs = edgegen_specs(path, precision, strategy, exported_folder(draft), note, also, placements, **options)
        if device != "CPU" and strategy == "speculative":  # also the LUD-tuned default model (NPU bench)
            specs += _lexical_specs(device, note)
        if baselines:
            anchor_strategy = "speculative" if "speculative" in also else strategy  # the anchors' nearest pipeline
            if device != "CPU" and anchor_strategy == "speculative" and "prompt-lookup" in also:
                # openvino-genai's NPU speculative pipeline (stateful FastDraft) refuses a drafter with a reduced
                # head (the shipped one: "Vocab sizes should be the same"); its NPU prompt lookup runs
                anchor_strategy = "prompt-lookup"
            anchors, lines = anchor_specs(path, precision, anchor_strategy, exported_folder(draft))
            specs += anchors
            for line in lines:
                note(line)
        engines = open_engines(specs, device, note=note, skipped=skipped, opener=IsolatedEngine)
        for spec, engine in engines:
            if spec.is_headline:
                note(f"{spec.label} ({precision}): edgegen.load() chose {engine.backend}; the default strategy "
                     f"ran {engine.strategy}")
        ids = encode_prompts(path, [*chosen, WARMUP_PROMPT])
        failed: dict[str, str] = {}
        runs += timed_runs(engines, chosen, ids, new_tokens, warmup, repeats, loads, desc=f"bench {precision}",
                           warmup_prompts=[WARMUP_PROMPT], failed=failed)
        for spec, _ in engines:
            if spec.label in failed:
                note(f"{spec.label}: cannot run {path}: {failed[spec.label]}, left out")
                skipped.append((spec, failed[spec.label]))
        engines = [(s, e) for s, e in engines if s.label not in failed]
        if peak_rss:  # each engine's own process, after the timed prompts (before the long TTFT prompts)
            for spec, engine in engines:
                try:
                    rss[spec.label, spec.weights] = engine.peak_rss_mb()
                except Exception as e:  # a failed measurement must not lose the bench's timings
                    note(f"{spec.label}: peak RSS not measured ({type(e).__name__}: {e})".splitlines()[0])
        if prompt_tokens:
            from edgegen.bench.ttft import ttft_runs

            ttft += ttft_runs([(s, e) for s, e in engines if not s.drafts and not s.padded], path,
                              prompt_tokens, loads=loads)
        del engines  # their processes end before the next precision's start
    if not runs:
        raise EdgegenError("nothing was benchmarked: " + "; ".join(notes))
    rows = summarize(runs, eos, rss, skipped)
    sections, extra = _extra_sections(rows, ttft, bandwidth, folders)
    if chat_turns:
        from edgegen.bench.chat import chat_lines, chat_table, run_chat

        first = next(iter(folders))
        turns = run_chat(Path(folders[first]), first, chat_turns, chat_new_tokens, loads, note, anchor=baselines)
        sections.append(f"Chat, {chat_turns} turns ({first}, up to {chat_new_tokens} new tokens per answer, greedy); "
                        "TTFT per turn:\n\n" + chat_table(turns) + "\n\n" + "\n".join(chat_lines(turns)))
        extra["chat"] = turns
    settings = {"command": command, "model": model or "default", "weights": list(weights),
                "prompts": f"{len(chosen)} ({prompts})", "prompt_count": len(chosen), "new_tokens": new_tokens,
                "repeats": repeats, "warmup": warmup, "baselines": baselines, "loads": loads,
                "folders": folders, "quality": quality, "strategy": strategy, "draft": draft,
                "strategy_options": options, "prompt_tokens": list(prompt_tokens), "chat_turns": chat_turns,
                "device": device}
    from edgegen.bench.machine import machine_info

    paths = write_reports(Path(out), runs, rows, settings, machine_info(), notes, sections, extra)
    echo(markdown_table(rows))
    for section in sections:
        echo("")
        echo(section)
    echo("wrote " + ", ".join(str(p) for p in paths))
    return rows


def _lexical_specs(device: str, note: Callable[[str], None]) -> list[EngineSpec]:
    """The LUD-tuned default model on ``device`` (its profile's export, made once): AR, and lexical decoding
    verified and unverified, compared within that model (``EngineSpec.model``)."""
    from edgegen.artifacts import DEFAULT_LUD
    from edgegen.bench.engines import edgegen_spec
    from edgegen.loading import DEVICE_PROFILES
    from edgegen.models import resolve_model
    from edgegen.profiles import load_profile

    try:
        lud = resolve_model(DEFAULT_LUD, load_profile(DEVICE_PROFILES[device]))
    except EdgegenError as e:
        note(f"{DEFAULT_LUD}: {str(e).splitlines()[0]}; lexical decoding left out")
        return []
    weights = folder_weights(lud)
    return [edgegen_spec(lud, "openvino", weights, "ar", "edgegen-ov-lud", model="lud"),
            edgegen_spec(lud, "openvino", weights, "lexical", "edgegen-ov-lud-lexical-verified", model="lud",
                         verified=True),
            edgegen_spec(lud, "openvino", weights, "lexical", "edgegen-ov-lud-lexical", model="lud")]


def _bandwidth() -> float | None:
    from edgegen.bench.machine import read_bandwidth_gbs

    try:
        return read_bandwidth_gbs()
    except MemoryError:
        return None


def _extra_sections(rows: Sequence[Row], ttft: Sequence[Run], bandwidth: float | None,
                    folders: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    """The TTFT-at-length table and the memory-bandwidth line, as markdown, and their data for bench.json."""
    from edgegen import runtimes
    from edgegen.bench.machine import weight_bytes

    sections: list[str] = []
    extra: dict[str, Any] = {}
    if ttft:
        from edgegen.bench.ttft import ttft_table

        sections.append("Time to first token at fixed prompt lengths (raw text, 2 new tokens, median over "
                        "distinct prompts; x fastest anchor < 1: faster):\n\n" + ttft_table(ttft))
        extra["ttft_runs"] = ttft
    if bandwidth:
        parts = []
        ceilings = {}
        for r in rows:
            if (r.load != "none" or r.spec.drafts or r.spec.is_headline or r.spec.padded or r.weights not in folders
                    or r.skipped):  # AR engines only: a drafting strategy's tokens share weight reads
                continue
            try:
                size = weight_bytes(Path(folders[r.weights]), runtimes.graph_format(r.backend))
            except (KeyError, OSError):
                continue
            ceiling = bandwidth * 1e9 / size
            ceilings[r.engine, r.weights] = {"weight_bytes": size, "ceiling_tokens_per_s": ceiling,
                                             "fraction": r.tokens_per_s / ceiling}
            parts.append(f"{r.engine} {r.weights} {r.tokens_per_s / ceiling:.0%} of {ceiling:.0f} tokens/s "
                         f"({size / 1e6:.0f} MB)")
        if parts:
            sections.append(f"Memory-bandwidth ceiling: single-thread read bandwidth {bandwidth:.1f} GB/s (NumPy copy "
                            "of 512 MiB, best of 5); ceiling = bandwidth / bytes a step reads of the graph the "
                            "engine runs (ONNX: graph + external data less the tables it only gathers from, the float "
                            "embedding; OpenVINO: .bin). "
                            "Quiet AR tokens/s as a fraction of it: " + "; ".join(parts) + ".")
        extra["bandwidth"] = {"read_gb_per_s": bandwidth,
                              "engines": {f"{e} {w}": v for (e, w), v in ceilings.items()}}
    return sections, extra


__all__ = ["EngineSpec", "Prompt", "Row", "Run", "Timing", "load_prompts", "measure", "run_bench", "summarize"]
