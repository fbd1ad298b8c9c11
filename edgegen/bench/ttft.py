"""Time to first token at fixed prompt lengths (``edgegen bench --prompt-tokens 128 --prompt-tokens 1000``).

Prompts of exactly N tokens are cut from the packaged prompts' text (raw, no chat template), each from
another start offset, so no two share a first block: a runtime with a prefix cache (openvino-genai)
cannot reuse an earlier prompt's prefill. Each engine generates two tokens per prompt; the table gives
the median TTFT per length and its ratio to the fastest AR anchor's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgegen.bench.engines import EngineSpec
from edgegen.bench.runner import Prompt, Run, encode_prompts, load_prompts, median
from edgegen.runtimes.baselines import TokenEngine

STRIDE = 97  # tokens between the start offsets of two prompts of one length


def fixed_length_prompts(stream: Sequence[int], lengths: Sequence[int],
                         count: int) -> tuple[list[Prompt], dict[str, list[int]]]:
    """``count`` + 1 prompts (the first for warm-up) of each length in ``lengths``, cut from the token ``stream``
    (repeated as often as a length needs) at start offsets ``STRIDE`` apart."""
    prompts, ids = [], {}
    for n in lengths:
        for i in range(count + 1):
            start = (i * STRIDE) % len(stream)
            repeated = list(stream) * ((start + n) // len(stream) + 1)
            pid = f"len{n}-{i}"
            prompts.append(Prompt(pid, "", False, f"{n} tokens"))
            ids[pid] = repeated[start:start + n]
    return prompts, ids


def packaged_text_ids(folder: Path) -> list[int]:
    """The packaged prompts' text, raw (no chat template), as one stream of ``folder``'s token ids."""
    texts = [Prompt(p.id, p.prompt, False, p.category) for p in load_prompts("all")]
    return [t for ids in encode_prompts(folder, texts).values() for t in ids]


def ttft_runs(engines: Sequence[tuple[EngineSpec, TokenEngine]], folder: Path, lengths: Sequence[int],
              count: int = 3, loads: Sequence[str] = ("none",)) -> list[Run]:
    """TTFT of every engine at every prompt length (engines taking turns per prompt; one warm-up prompt each)."""
    from edgegen.bench.runner import timed_runs

    runs: list[Run] = []
    prompts, ids = fixed_length_prompts(packaged_text_ids(folder), lengths, count)
    for n in lengths:
        mine = [p for p in prompts if p.category == f"{n} tokens"]
        # the warm-up prompt is never timed; the timed prompts are all distinct
        runs += timed_runs(engines, mine[1:], ids, 2, warmup=1, loads=loads, desc=f"TTFT {n} tokens",
                           warmup_prompts=mine[:1])
    return runs


def ttft_table(runs: Sequence[Run]) -> str:
    """engine | backend | weights | TTFT ms at each length | x fastest AR anchor at each length (<1: faster)."""
    lengths = list(dict.fromkeys(r.category for r in runs))
    loads = list(dict.fromkeys(r.load for r in runs))
    keys = list(dict.fromkeys((r.load, r.weights, r.label) for r in runs))
    ttft = {(load, w, e, c): median([r.timing.ttft_s * 1e3 for r in runs if (r.load, r.weights, r.label, r.category)
                                     == (load, w, e, c)]) for load, w, e in keys for c in lengths}
    spec = {r.label: r.engine for r in runs}
    backend = {r.label: r.backend for r in runs}
    fastest = {(load, w, c): min((ttft[load, w, e, c] for ll, ww, e in keys if (ll, ww) == (load, w)
                                  and spec[e].is_anchor and spec[e].strategy == "ar"), default=0.0)
               for load, w, _ in keys for c in lengths}
    load_head = "load | " if len(loads) > 1 else ""
    lines = [f"| {load_head}engine | backend | weights | " + " | ".join(f"TTFT ms @{c}" for c in lengths)
             + " | " + " | ".join(f"x fastest anchor @{c}" for c in lengths) + " |",
             "|" + "---|" * (3 + (len(loads) > 1)) + "---:|" * (2 * len(lengths))]
    for load, w, e in keys:
        cells = [f"{ttft[load, w, e, c]:.1f}" for c in lengths]
        ratios = [f"{ttft[load, w, e, c] / fastest[load, w, c]:.2f}x" if fastest[load, w, c] > 0 else "—"
                  for c in lengths]
        load_cell = f"{load} | " if len(loads) > 1 else ""
        lines.append(f"| {load_cell}{e} | {backend[e]} | {w} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)
