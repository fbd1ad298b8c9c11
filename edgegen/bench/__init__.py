"""``edgegen bench``: edgegen's AR decode on both backends against openvino-genai and onnxruntime-genai.

    from edgegen.bench import run_bench
    rows = run_bench(weights=("int8", "int4"), prompts="all", new_tokens=128, out=Path("bench-out"))

Same prompts as token ids, greedy, exactly N new tokens per run (EOS ignored), warm-up first; the
report gives median tokens/s and TTFT per engine, the ratio to the fastest baseline at each
precision and whether edgegen's tokens equal each baseline's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgegen.artifacts import DEFAULT_DRAFT, default_drafter_model
from edgegen.bench.report import Row, machine_info, markdown_table, summarize, write_reports
from edgegen.bench.runner import (
    Prompt,
    Run,
    Timing,
    exported_folder,
    folder_weights,
    load_prompts,
    measure,
    prepare_folder,
    run_precision,
)
from edgegen.errors import EdgegenError
from edgegen.manifest import read_manifest


def run_bench(model: str | None = None, weights: Sequence[str] = (), prompts: str = "all",
              new_tokens: int = 128, repeats: int = 1, warmup: int = 1, baselines: bool = True,
              out: Path = Path("bench-out"), limit: int | None = None, command: str = "edgegen bench",
              echo: Callable[[str], None] = print, strategy: str = "ar", draft: str | None = None,
              **options: Any) -> list[Row]:
    """Run the benchmark, write ``out``/bench.json, bench.md, bench.png, print the table; return its rows.

    model: None/"default" (SmolLM2, exported per precision into the cache), an exported folder (used
    at its own precision), or a Hugging Face folder / .gguf (exported per precision). weights: the
    precisions to export and compare (default int8; ignored for an exported folder). limit: the first
    N prompts of each set only (quick runs). strategy: "ar", or "speculative" (with ``draft``, an exported
    draft model folder; the default model's shipped drafter when omitted) / "prompt-lookup" to compare
    edgegen's speculative decoding with its own AR, the AR anchors and openvino-genai's pipeline for
    the same strategy; ``options`` go to the strategy.
    """
    if new_tokens < 2:
        raise EdgegenError(f"--new-tokens must be >= 2 (the decode rate needs two tokens), got {new_tokens}")
    if repeats < 1 or warmup < 0:
        raise EdgegenError("--repeats must be >= 1 and --warmup >= 0")
    if strategy == "speculative" and draft in (None, DEFAULT_DRAFT):
        if draft is None and model not in (None, "default"):
            raise EdgegenError("--strategy speculative needs --draft DIR (an exported draft model) for this model")
        draft = str(default_drafter_model())  # the drafter shipped with the default model
    if draft is not None and exported_folder(draft) is None:
        raise EdgegenError(f"draft model {draft} is not an exported model folder (no edgegen.json)")
    chosen = load_prompts(prompts, limit)
    notes: list[str] = []

    def note(line: str) -> None:
        notes.append(line)
        echo(line)

    folder = exported_folder(model)
    if folder is not None and weights and set(weights) != {folder_weights(folder)}:
        note(f"{folder} is exported at {folder_weights(folder)}: --weights {'/'.join(weights)} does not apply")
    runs: list[Run] = []
    eos: set[int] = set()
    folders: dict[str, str] = {}
    quality: dict[str, dict[str, float]] = {}
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
        runs += run_precision(precision, path, chosen, new_tokens, repeats, warmup, baselines, note, strategy,
                              exported_folder(draft), **options)
    if not runs:
        raise EdgegenError("nothing was benchmarked: " + "; ".join(notes))
    rows = summarize(runs, eos)
    settings = {"command": command, "model": model or "default", "weights": list(weights),
                "prompts": f"{len(chosen)} ({prompts})", "prompt_count": len(chosen), "new_tokens": new_tokens,
                "repeats": repeats, "warmup": warmup, "baselines": baselines,
                "folders": folders, "quality": quality, "strategy": strategy, "draft": draft,
                "strategy_options": options}
    paths = write_reports(Path(out), runs, rows, settings, machine_info(), notes)
    echo(markdown_table(rows))
    echo("wrote " + ", ".join(str(p) for p in paths))
    return rows


__all__ = ["Prompt", "Row", "Run", "Timing", "load_prompts", "measure", "run_bench", "summarize"]
