"""Benchmark results: per-engine summaries, the markdown table, bench.json and the bar chart."""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgegen.bench.runner import Run, median

WEIGHTS_ORDER = ("fp32", "fp16", "int8", "int4")


def is_baseline(engine: str) -> bool:
    """Baselines are every engine that is not edgegen's own."""
    return not engine.startswith("edgegen")


def is_ar_anchor(engine: str) -> bool:
    """A baseline's plain AR pipeline (the anchors every speed goal is measured against)."""
    from edgegen.runtimes.baselines import BASELINES

    return engine in BASELINES


def _strategy(engine: str) -> str | None:
    """The speculative strategy an engine runs (None for AR), read from its name."""
    for name in ("speculative", "prompt-lookup"):
        if engine.endswith(f"-{name}"):
            return name
    return None


def _token_references(engine: str) -> list[str]:
    """Engines whose tokens ``engine``'s must equal: its own AR (a speculative engine) or the baselines."""
    strategy = _strategy(engine)
    if strategy is None:
        return []
    base = engine[: -len(strategy) - 1]
    return [base + "-2row", base] if base == "edgegen-ort" else [base]


@dataclass
class Row:
    """One engine at one precision, summarized over all its timed runs."""

    engine: str
    backend: str
    weights: str
    tokens_per_s: float  # median decode rate
    ttft_ms: float  # median time to first token
    runs: int
    x_fastest: float | None = None  # tokens/s over the fastest AR baseline's at this precision
    identical: dict[str, tuple[int, int]] = field(default_factory=dict)  # reference -> (equal prompts, prompts)
    # speculative engines only
    acceptance: float | None = None  # accepted / proposed draft tokens
    tokens_per_step: float | None = None  # new tokens per target forward
    x_edgegen_ar: float | None = None  # over edgegen's fastest AR engine
    x_baseline_strategy: float | None = None  # over openvino-genai running the same strategy


def _first_tokens(runs: Sequence[Run]) -> dict[tuple[str, str, str], list[int]]:
    """(engine, weights, prompt) -> tokens of the first repeat."""
    out: dict[tuple[str, str, str], list[int]] = {}
    for r in runs:
        out.setdefault((r.engine, r.weights, r.prompt_id), r.timing.tokens)
    return out


def same_tokens(a: Sequence[int], b: Sequence[int], eos_ids: Collection[int] = ()) -> bool:
    """Equal up to the first EOS in either sequence (engines differ in what they do after an EOS)."""
    eos = [i for seq in (a, b) for i, t in enumerate(seq) if t in eos_ids]
    cut = min(eos, default=max(len(a), len(b)))
    return list(a[:cut]) == list(b[:cut])


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference > 0 else None


def _speculative_figures(row: Row, runs: Sequence[Run]) -> None:
    mine = [r.timing for r in runs if (r.engine, r.weights) == (row.engine, row.weights)]
    proposed = sum(t.engine_metrics.get("draft_proposed", 0) for t in mine)
    steps = sum(t.engine_metrics.get("target_steps", 0) for t in mine)
    if proposed:
        row.acceptance = sum(t.engine_metrics.get("draft_accepted", 0) for t in mine) / proposed
    if steps:
        row.tokens_per_step = sum(len(t.tokens) - 1 for t in mine) / steps


def summarize(runs: Sequence[Run], eos_ids: Collection[int] = ()) -> list[Row]:
    """One Row per (precision, engine), in run order, with ratios and token identity filled in."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.weights, r.engine), []).append(r)
    rows = [Row(engine, rs[0].backend, weights, median([r.timing.tokens_per_s for r in rs]),
                median([r.timing.ttft_s * 1e3 for r in rs]), len(rs)) for (weights, engine), rs in groups.items()]
    first = _first_tokens(runs)
    for row in rows:
        peers = [b for b in rows if b.weights == row.weights]
        anchors = [b for b in peers if is_ar_anchor(b.engine)]
        row.x_fastest = _ratio(row.tokens_per_s, max((b.tokens_per_s for b in anchors), default=0.0))
        strategy = _strategy(row.engine)
        if strategy is not None:
            _speculative_figures(row, runs)
            edgegen_ar = [b.tokens_per_s for b in peers if b.engine in ("edgegen-ort", "edgegen-ov")]
            row.x_edgegen_ar = _ratio(row.tokens_per_s, max(edgegen_ar, default=0.0))
            same = [b.tokens_per_s for b in peers if b.engine == f"openvino-genai-{strategy}"]
            row.x_baseline_strategy = _ratio(row.tokens_per_s, max(same, default=0.0))
        if is_baseline(row.engine) and strategy is None:
            continue
        references = (_token_references(row.engine) if not is_baseline(row.engine)
                      else [row.engine[: -len(strategy) - 1]]) if strategy else [b.engine for b in anchors]
        prompts = [p for (e, w, p) in first if e == row.engine and w == row.weights]
        for ref in references:
            pairs = [(first[(row.engine, row.weights, p)], first.get((ref, row.weights, p))) for p in prompts]
            if not any(other is not None for _, other in pairs):
                continue
            equal = sum(other is not None and same_tokens(mine, other, eos_ids) for mine, other in pairs)
            row.identical[ref] = (equal, sum(other is not None for _, other in pairs))
    rows.sort(key=lambda r: (_weights_rank(r.weights), is_baseline(r.engine)))
    return rows


def _weights_rank(weights: str) -> int:
    return WEIGHTS_ORDER.index(weights) if weights in WEIGHTS_ORDER else len(WEIGHTS_ORDER)


def _identical_cell(row: Row) -> str:
    if not row.identical:
        return "—" if is_baseline(row.engine) else "n/a"
    return ", ".join(f"{k}/{n} vs {name}" for name, (k, n) in row.identical.items())


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "—"


def markdown_table(rows: Sequence[Row]) -> str:
    """engine | backend | weights | tokens/s | TTFT ms | x fastest baseline | identical; with speculative
    engines also acceptance, tokens per target step and the ratios to edgegen AR and the baseline's
    own speculative pipeline."""
    if not any(_strategy(r.engine) for r in rows):
        lines = ["| engine | backend | weights | tokens/s | TTFT ms | x fastest baseline | identical |",
                 "|---|---|---|---:|---:|---:|---|"]
        for r in rows:
            lines.append(f"| {r.engine} | {r.backend} | {r.weights} | {r.tokens_per_s:.1f} | {r.ttft_ms:.1f} | "
                         f"{_x(r.x_fastest)} | {_identical_cell(r)} |")
        return "\n".join(lines)
    lines = ["| engine | backend | weights | tokens/s | acceptance | tokens/step | x edgegen AR | "
             "x fastest AR anchor | x openvino-genai same strategy | identical |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        accept = f"{100 * r.acceptance:.0f}%" if r.acceptance is not None else "—"
        per_step = f"{r.tokens_per_step:.2f}" if r.tokens_per_step is not None else "—"
        lines.append(f"| {r.engine} | {r.backend} | {r.weights} | {r.tokens_per_s:.1f} | {accept} | {per_step} | "
                     f"{_x(r.x_edgegen_ar)} | {_x(r.x_fastest)} | {_x(r.x_baseline_strategy)} | "
                     f"{_identical_cell(r)} |")
    return "\n".join(lines)


def category_table(runs: Sequence[Run]) -> str:
    """Median tokens/s per engine and prompt set (code, chat), one row per (precision, engine)."""
    categories = list(dict.fromkeys(r.category for r in runs))
    rows = summarize(runs)
    lines = ["| engine | weights | " + " | ".join(f"{c} tokens/s" for c in categories) + " |",
             "|---|---|" + "---:|" * len(categories)]
    for row in rows:
        cells = [median([r.timing.tokens_per_s for r in runs
                         if r.engine == row.engine and r.weights == row.weights and r.category == c])
                 for c in categories]
        lines.append(f"| {row.engine} | {row.weights} | " + " | ".join(f"{v:.1f}" for v in cells) + " |")
    return "\n".join(lines)


def _per_set_parts(runs: Sequence[Run]) -> list[str]:
    """Per prompt set: the whole table for speculative runs (their goals differ by set), else tokens/s."""
    if not any(_strategy(r.engine) for r in runs):
        return ["Median tokens/s per prompt set:", "", category_table(runs), ""]
    parts = []
    for category in dict.fromkeys(r.category for r in runs):
        parts += [f"Prompt set {category}:", "", markdown_table(summarize([r for r in runs if r.category == category])),
                  ""]
    return parts


def loop_overhead_lines(runs: Sequence[Run]) -> list[str]:
    """Per edgegen engine: what the NumPy loop adds per token on top of the runtime's forward.

    decode time (first to last token) minus the time inside session.forward, over the forwards in
    that span: sampling, bookkeeping and Python calls.
    """
    lines = []
    for engine, weights in dict.fromkeys((r.engine, r.weights) for r in runs if not is_baseline(r.engine)):
        per_token, shares = [], []
        for r in runs:
            m = r.timing.engine_metrics
            if (r.engine, r.weights) != (engine, weights) or not m.get("target_steps"):
                continue
            overhead = r.timing.decode_s * 1e3 - m["target_ms"]
            per_token.append(overhead / m["target_steps"] * 1e3)
            shares.append(overhead / (r.timing.decode_s * 1e3))
        if per_token:
            lines.append(f"{engine} {weights}: {median(per_token):.0f} us/token "
                         f"({100 * median(shares):.1f}% of decode time)")
    return lines


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, OS, runtime and baseline versions, and the date."""
    from edgegen import __version__
    from edgegen.runtimes.baselines import versions

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "os": platform.platform(),
            "python": platform.python_version(), "edgegen": __version__, "versions": versions(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def machine_line(machine: dict[str, Any]) -> str:
    v = machine["versions"]
    return (f"{machine['cpu']}, {machine['usable_cores']} cores; onnxruntime {v['onnxruntime']}, "
            f"openvino {v['openvino']}, onnxruntime-genai {v['onnxruntime-genai']}, "
            f"openvino-genai {v['openvino-genai']}; {machine['date']}")


def write_reports(out: Path, runs: Sequence[Run], rows: Sequence[Row], settings: dict[str, Any],
                  machine: dict[str, Any], notes: Sequence[str] = ()) -> list[Path]:
    """Write bench.json, bench.md and (when matplotlib is installed) bench.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    raw = []
    for r in runs:
        d = asdict(r)
        d["timing"]["tokens_per_s"] = r.timing.tokens_per_s
        raw.append(d)
    data = {"settings": settings, "machine": machine, "notes": list(notes),
            "summary": [asdict(r) for r in rows], "runs": raw}
    paths = [out / "bench.json", out / "bench.md"]
    paths[0].write_text(json.dumps(data, indent=1) + "\n")
    paths[1].write_text(markdown_report(runs, rows, settings, machine, notes))
    png = write_chart(out / "bench.png", rows)
    if png is not None:
        paths.append(png)
    return paths


def markdown_report(runs: Sequence[Run], rows: Sequence[Row], settings: dict[str, Any],
                    machine: dict[str, Any], notes: Sequence[str] = ()) -> str:
    """bench.md: the table, the per-prompt-set table, how it was measured and the machine."""
    parts = [
        "# edgegen bench", "",
        f"`{settings.get('command', 'edgegen bench')}`", "",
        markdown_table(rows), "",
        *_per_set_parts(runs),
        f"Greedy, batch 1, {settings.get('new_tokens')} new tokens per prompt (EOS ignored), "
        f"{settings.get('prompts')} prompts x {settings.get('repeats')} repeat(s), "
        f"{settings.get('warmup')} warm-up run(s) per engine. tokens/s = (new tokens - 1) / (first to last "
        "token); TTFT = call to first token; both timed by the same clock for every engine, medians over "
        "prompts. x fastest baseline: tokens/s over the fastest baseline's at the same precision. "
        "identical: prompts whose greedy tokens equal the baseline's, up to the first EOS.", "",
        f"Machine: {machine_line(machine)}", "",
    ]
    overhead = loop_overhead_lines(runs)
    if overhead:
        parts += ["Python/NumPy loop overhead per token (decode time outside session.forward): "
                  + "; ".join(overhead), ""]
    if settings.get("folders"):
        parts += ["Models: " + ", ".join(f"{w} `{p}`" for w, p in settings["folders"].items()), ""]
    gates = [f"{w} {fmt} x{ratio:.3f}"
             for w, found in settings.get("quality", {}).items() for fmt, ratio in found.items()]
    if gates:
        parts += ["Export quality gate (perplexity over fp32 torch): " + ", ".join(gates), ""]
    parts += [f"- {n}" for n in notes] + ([""] if notes else [])
    return "\n".join(parts)


def write_chart(path: Path, rows: Sequence[Row]) -> Path | None:
    """Grouped bar chart of tokens/s: one group per precision, one bar per engine. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: bench.png skipped")
        return None
    weights = list(dict.fromkeys(r.weights for r in rows))
    engines = list(dict.fromkeys(r.engine for r in rows))
    width = 0.8 / max(len(engines), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(weights) + 2), 4.2))
    for i, engine in enumerate(engines):
        values = {r.weights: r.tokens_per_s for r in rows if r.engine == engine}
        xs = [w + (i - (len(engines) - 1) / 2) * width for w in range(len(weights))]
        heights = [values.get(w, 0.0) for w in weights]
        bars = ax.bar(xs, heights, width, label=engine, hatch="//" if is_baseline(engine) else None)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(weights)), weights)
    ax.set_ylabel("tokens/s (median decode rate)")
    ax.set_title("edgegen bench: greedy AR decode, batch 1 (higher is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
