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

from edgegen.bench.report import Row, machine_info, markdown_table, summarize, write_reports
from edgegen.bench.runner import Prompt, Run, Timing, load_prompts, measure, prepare_folders, run_precision
from edgegen.errors import EdgegenError
from edgegen.manifest import read_manifest


def run_bench(model: str | None = None, weights: Sequence[str] = ("int8",), prompts: str = "all",
              new_tokens: int = 128, repeats: int = 1, warmup: int = 1, baselines: bool = True,
              out: Path = Path("bench-out"), limit: int | None = None, command: str = "edgegen bench",
              echo: Callable[[str], None] = print) -> list[Row]:
    """Run the benchmark, write ``out``/bench.json, bench.md, bench.png, print the table; return its rows.

    model: None/"default" (SmolLM2, exported per precision into the cache), an exported folder (used
    at its own precision), or a Hugging Face folder / .gguf (exported per precision). limit: the first
    N prompts of each set only (quick runs).
    """
    if new_tokens < 2:
        raise EdgegenError(f"--new-tokens must be >= 2 (the decode rate needs two tokens), got {new_tokens}")
    if repeats < 1 or warmup < 0:
        raise EdgegenError("--repeats must be >= 1 and --warmup >= 0")
    chosen = load_prompts(prompts, limit)
    notes: list[str] = []

    def note(line: str) -> None:
        notes.append(line)
        echo(line)

    runs: list[Run] = []
    eos: set[int] = set()
    for precision, folder in prepare_folders(model, weights):
        eos |= set(read_manifest(folder).eos_token_ids)
        runs += run_precision(precision, folder, chosen, new_tokens, repeats, warmup, baselines, note)
    rows = summarize(runs, eos)
    settings = {"command": command, "model": model or "default", "weights": list(weights),
                "prompts": f"{len(chosen)} ({prompts})", "prompt_count": len(chosen), "new_tokens": new_tokens,
                "repeats": repeats, "warmup": warmup, "baselines": baselines}
    paths = write_reports(Path(out), runs, rows, settings, machine_info(), notes)
    echo(markdown_table(rows))
    echo("wrote " + ", ".join(str(p) for p in paths))
    return rows


__all__ = ["Prompt", "Row", "Run", "Timing", "load_prompts", "measure", "run_bench", "summarize"]
