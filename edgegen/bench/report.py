"""Benchmark results: per-engine summaries, the markdown tables, and the one report writer (JSON + markdown).

Ratios and token references are chosen from each run's ``EngineSpec`` (kind, strategy, options), never
from engine names.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgegen.bench.engines import EngineSpec
from edgegen.bench.machine import machine_line
from edgegen.bench.runner import Run, median
from edgegen.files import publish_file

WEIGHTS_ORDER = ("fp32", "fp16", "int8", "int4")


@dataclass
class Row:
    """One engine at one precision, summarized over all its timed runs."""

    engine: str  # the engine's label
    backend: str
    weights: str
    tokens_per_s: float  # median decode rate
    ttft_ms: float  # median time to first token
    runs: int
    spec: EngineSpec | None = None
    load: str = "none"  # the background load it ran under (bench.load)
    peak_rss_mb: float | None = None  # peak resident memory of a process running only this engine
    x_fastest: float | None = None  # tokens/s over the fastest AR baseline's at this precision
    identical: dict[str, tuple[int, int]] = field(default_factory=dict)  # reference -> (equal prompts, prompts)
    # speculative engines only
    acceptance: float | None = None  # accepted / proposed draft tokens
    tokens_per_step: float | None = None  # new tokens per target forward
    x_edgegen_ar: float | None = None  # over edgegen's fastest AR engine (drafting and headline rows)
    x_baseline_strategy: float | None = None  # over openvino-genai running the same strategy
    skipped: str | None = None  # why this engine could not run the model (no figures: a row of the table all the same)


def _first_tokens(runs: Sequence[Run]) -> dict[tuple[str, str, str, str], list[int]]:
    """(load, engine, weights, prompt) -> tokens of the first repeat."""
    out: dict[tuple[str, str, str, str], list[int]] = {}
    for r in runs:
        out.setdefault((r.load, r.label, r.weights, r.prompt_id), r.timing.tokens)
    return out


def same_tokens(a: Sequence[int], b: Sequence[int], eos_ids: Collection[int] = ()) -> bool:
    """Equal up to the first EOS in either sequence (engines differ in what they do after an EOS)."""
    eos = [i for seq in (a, b) for i, t in enumerate(seq) if t in eos_ids]
    cut = min(eos, default=max(len(a), len(b)))
    return list(a[:cut]) == list(b[:cut])


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference > 0 else None


def _speculative_figures(row: Row, runs: Sequence[Run]) -> None:
    mine = [r.timing for r in runs if (r.load, r.label, r.weights) == (row.load, row.engine, row.weights)]
    proposed = sum(t.engine_metrics.get("draft_proposed", 0) for t in mine)
    steps = sum(t.engine_metrics.get("target_steps", 0) for t in mine)
    if proposed:
        row.acceptance = sum(t.engine_metrics.get("draft_accepted", 0) for t in mine) / proposed
    if steps:
        row.tokens_per_step = sum(len(t.tokens) - 1 for t in mine) / steps


def _is_ar_anchor(spec: EngineSpec) -> bool:
    return spec.is_anchor and spec.strategy == "ar"


def _is_edgegen_ar(spec: EngineSpec) -> bool:
    """edgegen's plain AR on a named backend, one-row steps (the speed reference)."""
    return spec.kind == "edgegen" and spec.backend is not None and spec.strategy == "ar" and not spec.padded


def _token_references(spec: EngineSpec, peers: Sequence[Row]) -> list[str]:
    """Engines whose tokens ``spec``'s must equal: a drafting engine's own AR on its backend (edgegen: the
    padded AR first, whose numerics it shares), else every AR anchor."""
    if not spec.drafts:
        return [p.engine for p in peers if _is_ar_anchor(p.spec)]
    own_ar = [p for p in peers if p.spec.kind == spec.kind and p.spec.backend == spec.backend
              and p.spec.strategy == "ar"]
    return [p.engine for p in sorted(own_ar, key=lambda p: not p.spec.padded)]


def summarize(runs: Sequence[Run], eos_ids: Collection[int] = (),
              peak_rss_mb: Mapping[tuple[str, str], float] | None = None,
              skipped: Sequence[tuple[EngineSpec, str]] = ()) -> list[Row]:
    """One Row per (load, precision, engine), in run order, with ratios and token identity filled in.
    ``peak_rss_mb``: (engine label, weights) -> its peak RSS (``bench.memory``). ``skipped``: engines that could
    not run the model, with the reason, each a row without figures under every load."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.load, r.weights, r.label), []).append(r)
    rows = [Row(label, rs[0].backend, weights, median([r.timing.tokens_per_s for r in rs]),
                median([r.timing.ttft_s * 1e3 for r in rs]), len(rs), rs[0].engine, load,
                (peak_rss_mb or {}).get((label, weights))) for (load, weights, label), rs in groups.items()]
    first = _first_tokens(runs)
    for row in rows:
        spec = row.spec
        # ratios and token references within one model (a run can compare several: the NPU bench's LUD model)
        peers = [b for b in rows if (b.load, b.weights, b.spec.model) == (row.load, row.weights, spec.model)]
        anchors = [b for b in peers if _is_ar_anchor(b.spec)]
        row.x_fastest = _ratio(row.tokens_per_s, max((b.tokens_per_s for b in anchors), default=0.0))
        if spec.drafts:
            _speculative_figures(row, runs)
            same = [b.tokens_per_s for b in peers if b.spec.is_anchor and b.spec.strategy == spec.strategy]
            row.x_baseline_strategy = _ratio(row.tokens_per_s, max(same, default=0.0))
        if spec.drafts or spec.is_headline:
            edgegen_ar = [b.tokens_per_s for b in peers if _is_edgegen_ar(b.spec)]
            row.x_edgegen_ar = _ratio(row.tokens_per_s, max(edgegen_ar, default=0.0))
        if spec.is_anchor and not spec.drafts:
            continue
        prompts = [p for (load, e, w, p) in first if (load, e, w) == (row.load, row.engine, row.weights)]
        for ref in _token_references(spec, peers):
            pairs = [(first[(row.load, row.engine, row.weights, p)], first.get((row.load, ref, row.weights, p)))
                     for p in prompts]
            if not any(other is not None for _, other in pairs):
                continue
            equal = sum(other is not None and same_tokens(mine, other, eos_ids) for mine, other in pairs)
            row.identical[ref] = (equal, sum(other is not None for _, other in pairs))
    loads = list(dict.fromkeys(r.load for r in rows)) or ["none"]
    rows += [Row(spec.label, spec.backend or "—", spec.weights, 0.0, 0.0, 0, spec, load, skipped=reason)
             for load in loads for spec, reason in skipped]
    rows.sort(key=lambda r: (loads.index(r.load), _weights_rank(r.weights), r.spec.is_anchor))
    return rows


def _weights_rank(weights: str) -> int:
    return WEIGHTS_ORDER.index(weights) if weights in WEIGHTS_ORDER else len(WEIGHTS_ORDER)


def _identical_cell(row: Row) -> str:
    if not row.identical:
        return "—" if row.spec.is_anchor else "n/a"
    return ", ".join(f"{k}/{n} vs {name}" for name, (k, n) in row.identical.items())


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "—"


def _rss(row: Row) -> str:
    return f"{row.peak_rss_mb:.0f}" if row.peak_rss_mb is not None else "—"


def tables_per_load(items: Sequence[Any], table: Callable[[list[Any]], str]) -> str:
    """``table`` of ``items`` (anything with a ``load``), one headed table per background load."""
    loads = list(dict.fromkeys(i.load for i in items))
    return "\n\n".join(f"Background load: {load}\n\n" + table([i for i in items if i.load == load]) for load in loads)


def markdown_table(rows: Sequence[Row]) -> str:
    """engine | backend | weights | tokens/s | TTFT ms | x fastest baseline | identical (and peak RSS MB when
    measured); with drafting engines also acceptance, tokens per target step and the ratios to edgegen AR
    and the anchor's own pipeline for the same strategy. One table per background load when there are several."""
    if len({r.load for r in rows}) > 1:
        return tables_per_load(rows, markdown_table)
    rss = any(r.peak_rss_mb is not None for r in rows)
    rss_head, rss_rule = (" peak RSS MB |", "---:|") if rss else ("", "")
    if not any(r.spec.drafts for r in rows):
        lines = ["| engine | backend | weights | tokens/s | TTFT ms | x fastest baseline | identical |" + rss_head,
                 "|---|---|---|---:|---:|---:|---|" + rss_rule]
        for r in rows:
            if r.skipped is not None:
                lines.append(_skipped_line(r, 3, rss))
                continue
            lines.append(f"| {r.engine} | {r.backend} | {r.weights} | {r.tokens_per_s:.1f} | {r.ttft_ms:.1f} | "
                         f"{_x(r.x_fastest)} | {_identical_cell(r)} |" + (f" {_rss(r)} |" if rss else ""))
        return "\n".join(lines)
    lines = ["| engine | backend | weights | tokens/s | acceptance | tokens/step | x edgegen AR | "
             "x fastest AR anchor | x openvino-genai same strategy | identical |" + rss_head,
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|" + rss_rule]
    for r in rows:
        if r.skipped is not None:
            lines.append(_skipped_line(r, 6, rss))
            continue
        accept = f"{100 * r.acceptance:.0f}%" if r.acceptance is not None else "—"
        per_step = f"{r.tokens_per_step:.2f}" if r.tokens_per_step is not None else "—"
        lines.append(f"| {r.engine} | {r.backend} | {r.weights} | {r.tokens_per_s:.1f} | {accept} | {per_step} | "
                     f"{_x(r.x_edgegen_ar)} | {_x(r.x_fastest)} | {_x(r.x_baseline_strategy)} | "
                     f"{_identical_cell(r)} |" + (f" {_rss(r)} |" if rss else ""))
    return "\n".join(lines)


def _skipped_line(row: Row, dashes: int, rss: bool) -> str:
    """A table row for an engine that could not run the model: no figures, the reason in the last column."""
    reason = row.skipped.replace("|", "/") if row.skipped else ""
    return f"| {row.engine} | {row.backend} | {row.weights} | " + "— | " * dashes + f"cannot run: {reason} |" + (
        " — |" if rss else "")


def headline_lines(rows: Sequence[Row]) -> list[str]:
    """Per load and precision: what ``edgegen.load()`` + the default strategy gives a user, against the fastest
    AR anchor and edgegen's own AR (one row per step where its kernels compute rows alike; int4 on ONNX Runtime
    runs two)."""
    lines = []
    for r in rows:
        if r.spec.is_headline and r.skipped is None:
            where = f" under load '{r.load}'" if r.load != "none" else ""
            lines.append(f"{r.engine} ({r.weights}{where}, edgegen.load() on {r.backend} + the default strategy): "
                         f"{r.tokens_per_s:.1f} tokens/s = {_x(r.x_fastest)} the fastest AR anchor, "
                         f"{_x(r.x_edgegen_ar)} edgegen's own AR")
    return lines


def category_table(runs: Sequence[Run]) -> str:
    """Median tokens/s per engine and prompt set (code, chat), one row per (load, precision, engine)."""
    categories = list(dict.fromkeys(r.category for r in runs))
    loads = list(dict.fromkeys(r.load for r in runs))
    rows = summarize(runs)
    load_head, load_rule = ("load | ", "---|") if len(loads) > 1 else ("", "")
    lines = [f"| {load_head}engine | weights | " + " | ".join(f"{c} tokens/s" for c in categories) + " |",
             f"|{load_rule}---|---|" + "---:|" * len(categories)]
    for row in rows:
        cells = [median([r.timing.tokens_per_s for r in runs if (r.load, r.label, r.weights, r.category)
                         == (row.load, row.engine, row.weights, c)]) for c in categories]
        load_cell = f"{row.load} | " if len(loads) > 1 else ""
        lines.append(f"| {load_cell}{row.engine} | {row.weights} | " + " | ".join(f"{v:.1f}" for v in cells) + " |")
    return "\n".join(lines)


def _per_set_parts(runs: Sequence[Run]) -> list[str]:
    """Per prompt set: the whole table for drafting runs (their goals differ by set), else tokens/s."""
    if not any(r.engine.drafts for r in runs):
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
    for label, weights in dict.fromkeys((r.label, r.weights) for r in runs if r.load == "none"
                                        and not r.engine.is_anchor):
        per_token, shares = [], []
        for r in runs:
            m = r.timing.engine_metrics
            if (r.load, r.label, r.weights) != ("none", label, weights) or not m.get("target_steps"):
                continue
            overhead = r.timing.decode_s * 1e3 - m["target_ms"]
            per_token.append(overhead / m["target_steps"] * 1e3)
            shares.append(overhead / (r.timing.decode_s * 1e3))
        if per_token:
            lines.append(f"{label} {weights}: {median(per_token):.0f} us/token "
                         f"({100 * median(shares):.1f}% of decode time)")
    return lines


def drafting_lines(runs: Sequence[Run]) -> list[str]:
    """Per edgegen drafting engine (quiet runs): where a step's time goes. Rows per target step (the newest token
    plus the draft), target time per row, the drafter's time per step against a target step, and acceptance
    per head where the strategy counts it (hydra: ``head<k>_proposed`` / ``head<k>_accepted``)."""
    lines = []
    for label, weights in dict.fromkeys((r.label, r.weights) for r in runs if r.load == "none"
                                        and r.engine.kind == "edgegen" and r.engine.drafts):
        totals: dict[str, float] = {}
        for r in runs:
            if (r.load, r.label, r.weights) == ("none", label, weights):
                for key, value in r.timing.engine_metrics.items():
                    totals[key] = totals.get(key, 0.0) + value
        steps = totals.get("target_steps", 0.0)
        if not steps:
            continue
        rows = steps + totals.get("draft_proposed", 0.0)
        target_step = totals["target_ms"] / steps
        line = (f"{label} {weights}: {rows / steps:.2f} rows/step, {totals['target_ms'] / rows:.2f} ms/row, target "
                f"step {target_step:.1f} ms, drafter {totals.get('draft_ms', 0.0) / steps:.2f} ms/step "
                f"({totals.get('draft_ms', 0.0) / totals['target_ms']:.0%} of a target step)")
        heads = sorted(int(k[4:-9]) for k in totals if k.startswith("head") and k.endswith("_proposed"))
        if heads:
            line += "; acceptance per head " + ", ".join(
                f"{k}: {totals[f'head{k}_accepted'] / totals[f'head{k}_proposed']:.0%}"
                if totals[f"head{k}_proposed"] else f"{k}: —" for k in heads)
        lines.append(line)
    return lines


def write_report(out: Path, stem: str, data: Mapping[str, Any], markdown: str) -> list[Path]:
    """THE report writer: ``out``/<stem>.json (``data``) and <stem>.md (``markdown``), each swapped in whole."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for path, text in ((out / f"{stem}.json", json.dumps(data, indent=1, default=str) + "\n"),
                       (out / f"{stem}.md", markdown if markdown.endswith("\n") else markdown + "\n")):
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        publish_file(tmp, path)
        paths.append(path)
    return paths


def write_reports(out: Path, runs: Sequence[Run], rows: Sequence[Row], settings: dict[str, Any],
                  machine: dict[str, Any], notes: Sequence[str] = (), sections: Sequence[str] = (),
                  extra: Mapping[str, Any] | None = None) -> list[Path]:
    """The main bench's bench.json, bench.md and (when matplotlib is installed) bench.png in ``out``.
    ``sections``: further markdown parts (TTFT, chat, ...); ``extra``: their data for bench.json."""
    raw = []
    for r in runs:
        d = asdict(r)
        d["timing"]["tokens_per_s"] = r.timing.tokens_per_s
        raw.append(d)
    data = {"settings": settings, "machine": machine, "notes": list(notes),
            "summary": [asdict(r) for r in rows], "runs": raw, **(extra or {})}
    paths = write_report(out, "bench", data, markdown_report(runs, rows, settings, machine, notes, sections))
    png = write_chart(out / "bench.png", rows)
    if png is not None:
        paths.append(png)
    return paths


def markdown_report(runs: Sequence[Run], rows: Sequence[Row], settings: dict[str, Any],
                    machine: dict[str, Any], notes: Sequence[str] = (), sections: Sequence[str] = ()) -> str:
    """bench.md: the table, the per-prompt-set table, further sections, how it was measured and the machine."""
    headline = headline_lines(rows)
    parts = [
        "# edgegen bench", "",
        f"`{settings.get('command', 'edgegen bench')}`", "",
        markdown_table(rows), "",
        *([*headline, ""] if headline else []),
        *_per_set_parts(runs),
        *[part for section in sections for part in (section, "")],
        f"Greedy, batch 1, {settings.get('new_tokens')} new tokens per prompt (EOS ignored), "
        f"{settings.get('prompts')} prompts x {settings.get('repeats')} repeat(s), "
        f"{settings.get('warmup')} warm-up run(s) per engine on a prompt that is not timed. "
        "tokens/s = (new tokens - 1) / (first to last token); TTFT = call to first token; both timed by the "
        "same clock for every engine, medians over prompts. x fastest baseline: tokens/s over the fastest "
        "baseline's at the same precision. identical: prompts whose greedy tokens equal the baseline's, up to "
        "the first EOS.", "",
        f"Machine: {machine_line(machine)}", "",
    ]
    if any(r.peak_rss_mb is not None for r in rows):
        parts += ["peak RSS MB: the peak resident set (VmHWM) of a fresh child process that imports the bench, "
                  "opens only that engine and runs one generation of the longest prompt; it includes Python, "
                  "NumPy and the engine's runtime libraries, so the differences between rows are what the "
                  "engines themselves hold.", ""]
    overhead = loop_overhead_lines(runs)
    if overhead:
        parts += ["Python/NumPy loop overhead per token (decode time outside session.forward): "
                  + "; ".join(overhead), ""]
    drafting = drafting_lines(runs)
    if drafting:
        parts += ["Drafting, where the time goes (sums over the prompts; acceptance per head: accepted / proposed "
                  "drafts of that head, a head proposing only after every head before it):", "",
                  *[f"- {line}" for line in drafting], ""]
    if settings.get("folders"):
        parts += ["Models: " + ", ".join(f"{w} `{p}`" for w, p in settings["folders"].items()), ""]
    gates = [f"{w} {fmt} x{ratio:.3f}"
             for w, found in settings.get("quality", {}).items() for fmt, ratio in found.items()]
    if gates:
        parts += ["Export quality gate (perplexity over fp32 torch): " + ", ".join(gates), ""]
    parts += [f"- {n}" for n in notes] + ([""] if notes else [])
    return "\n".join(parts)


def write_chart(path: Path, rows: Sequence[Row]) -> Path | None:
    """Grouped bar chart of tokens/s (quiet runs): one group per precision, one bar per engine. None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: bench.png skipped")
        return None
    rows = [r for r in rows if r.load == rows[0].load and r.skipped is None]
    weights = list(dict.fromkeys(r.weights for r in rows))
    engines = list(dict.fromkeys(r.engine for r in rows))
    anchors = {r.engine for r in rows if r.spec.is_anchor}
    width = 0.8 / max(len(engines), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(weights) + 2), 4.2))
    for i, engine in enumerate(engines):
        values = {r.weights: r.tokens_per_s for r in rows if r.engine == engine}
        xs = [w + (i - (len(engines) - 1) / 2) * width for w in range(len(weights))]
        heights = [values.get(w, 0.0) for w in weights]
        bars = ax.bar(xs, heights, width, label=engine, hatch="//" if engine in anchors else None)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(weights)), weights)
    ax.set_ylabel("tokens/s (median decode rate)")
    ax.set_title("edgegen bench: greedy decode, batch 1 (higher is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
