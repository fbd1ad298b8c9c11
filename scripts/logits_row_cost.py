"""What one row of logits costs an exported model, per decode step and per drafted token (docs/models.md).

For each backend: the forward of n rows at a fixed cache position, once with every row's logits (what
verification of n - 1 drafted tokens asks for) and once with the last row's only (``last_only``: the LM head
sees one row, the ``logits_to_keep`` edit), so the difference over n - 1 rows is what a logits row costs in
the graph (LM head + output). Then the host's work on rows of that width: the copy a session makes, the
finite check, the argmax, and what a greedy drafter with a reduced head did per drafted token before it
picked from its own head (spread to the target vocabulary, a one-hot distribution, its argmax).

    .venv/bin/python scripts/logits_row_cost.py /work/gemma/int8 --rows 1 2 5 9 --repeats 30 --out cost.json

Run it on a quiet machine (/work/scratch/s7/quiet.sh nice -n 0 ...): the figures are medians of milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

PROMPT = ("The water cycle describes how water moves between the oceans, the air and the land. Heat from the "
          "sun warms the surface of lakes and seas, and some of the water turns into vapor and rises into the air.")


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def forward_costs(folder: Path, backend: str, rows: list[int], repeats: int, threads: int | None) -> dict:
    from edgegen.manifest import read_manifest
    from edgegen.runtimes import open_session
    from edgegen.tokenizer import TextTokenizer

    manifest = read_manifest(folder)
    session = open_session(folder, manifest, backend, threads=threads)
    ids = TextTokenizer(folder, manifest).encode_prompt(PROMPT, False)
    session.forward(np.asarray(ids, np.int64), last_only=True)
    base = session.position
    tokens = np.asarray(ids[1:1 + max(rows)], np.int64)
    out: dict = {"backend": backend, "prompt_tokens": len(ids), "forward_ms": {}}

    for n in rows:
        for last_only in (False, True):
            if n == 1 and last_only:
                continue

            def run(n: int = n, last_only: bool = last_only) -> None:
                session.forward(tokens[:n], last_only=last_only)
                session.trim(base)

            run()  # warm the shape
            out["forward_ms"][f"{n}{'-last' if last_only else ''}"] = median_ms(run, repeats)
    per_row = [(out["forward_ms"][str(n)] - out["forward_ms"][f"{n}-last"]) / (n - 1) for n in rows if n > 1]
    out["logits_row_in_graph_ms"] = statistics.median(per_row) if per_row else None
    return out


def host_costs(vocab: int, head: int, rows: int, repeats: int) -> dict:
    """Host work on logits rows of ``vocab`` floats (no model: random rows of the same width)."""
    from edgegen.sampling import SamplingConfig, distribution

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((rows, vocab)).astype(np.float32)
    head_ids = np.sort(rng.choice(vocab, head, replace=False)).astype(np.int64)
    head_logits = rng.standard_normal(head).astype(np.float32)
    full = np.full(vocab, -np.inf, np.float32)
    greedy = SamplingConfig()

    def drafter_before() -> int:  # spread to the target vocabulary, one-hot q, its argmax (per drafted token)
        spread = full.copy()
        spread[head_ids] = head_logits
        return int(np.argmax(distribution(spread, [], greedy)))

    def drafter_after() -> int:  # the head's own argmax, the lowest target id among equal maxima
        best = head_logits.max()
        return int(head_ids[head_logits == best].min())

    return {
        "vocab": vocab, "rows": rows, "drafter_head": head,
        "copy_rows_ms": median_ms(lambda: np.array(logits, np.float32), repeats),
        "alloc_rows_ms": median_ms(lambda: np.empty((1, rows, vocab), np.float32).fill(0), repeats),
        "finite_check_rows_ms": median_ms(lambda: np.isfinite(logits.sum()), repeats),
        "argmax_rows_ms": median_ms(lambda: np.argmax(logits, axis=-1), repeats),
        "greedy_onehot_row_ms": median_ms(lambda: distribution(logits[0], [], greedy), repeats),
        "drafter_token_before_ms": median_ms(drafter_before, repeats),
        "drafter_token_after_ms": median_ms(drafter_after, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an exported model folder")
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"])
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 2, 5, 9])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--head", type=int, default=32768, help="a reduced drafter head's size (host figures)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from edgegen.manifest import read_manifest

    vocab = read_manifest(args.model).vocab_size
    result = {"model": str(args.model), "vocab": vocab,
              "backends": [forward_costs(args.model, b, args.rows, args.repeats, args.threads) for b in args.backends],
              "host": host_costs(vocab, min(args.head, vocab), max(args.rows), args.repeats * 3)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
