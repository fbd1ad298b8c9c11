"""Soak: many short generations and abandoned streams in one process, resident memory sampled.

    .venv/bin/python scripts/soak.py [--model DIR] [--backend onnxruntime] [--generations 10000] [--abandoned 1000]

Memory must stay flat (issue 12: abandoned streams used to be freed only by the cycle collector).
The abandoned-stream phase runs with the cycle collector off, so a stream that is not freed by
reference counting alone shows as growth. Prints RSS at intervals, then min/max and the drift
(max - min) / min after warm-up.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

PROMPTS = ["Name a river.", "def add(a, b):", "Say hi in French.", "1, 2, 3,", "What is 2+2?"]  # raw: few tokens


def rss_mib() -> float:
    """Resident set size of this process (Linux /proc, else psutil)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Exported folder (default: the default model).")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--generations", type=int, default=10_000)
    parser.add_argument("--abandoned", type=int, default=1_000)
    parser.add_argument("--max-new-tokens", type=int, default=2, help="Tokens per short generation.")
    parser.add_argument("--threads", type=int, default=None, help="Runtime threads (default: the runtime's).")
    parser.add_argument("--every", type=int, default=500, help="Generations between RSS samples.")
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()

    import edgegen

    gen = edgegen.load(args.model, backend=args.backend, threads=args.threads)
    print(f"soak: {gen.manifest.name} on {gen.backend}/{gen.session.device}, {args.generations} generations of "
          f"{args.max_new_tokens} tokens, {args.abandoned} abandoned streams", flush=True)
    for i in range(args.warmup):
        gen.generate(PROMPTS[i % len(PROMPTS)], max_new_tokens=args.max_new_tokens, chat=False)
        with gen.stream(PROMPTS[i % len(PROMPTS)], max_new_tokens=32, chat=False) as stream:
            next(stream, None)
    gc.collect()
    samples = [("warm", 0, rss_mib())]
    start = time.perf_counter()

    def sample(phase: str, n: int) -> None:
        samples.append((phase, n, rss_mib()))
        print(f"{phase:10s} {n:6d}  rss {samples[-1][2]:8.1f} MiB  ({time.perf_counter() - start:7.0f} s)", flush=True)

    sample("warm", 0)
    for i in range(1, args.generations + 1):
        gen.generate(PROMPTS[i % len(PROMPTS)], max_new_tokens=args.max_new_tokens, chat=False,
                     temperature=0.7 if i % 2 else 0.0, seed=i)
        if i % args.every == 0:
            sample("generate", i)
    gc.disable()  # abandoned streams must be freed by reference counting alone
    try:
        for i in range(1, args.abandoned + 1):
            stream = gen.stream(PROMPTS[i % len(PROMPTS)], max_new_tokens=64, chat=False)
            next(stream, None)
            del stream  # dropped half-way: its session is released at once
            if i % max(1, args.every // 5) == 0:
                sample("abandoned", i)
    finally:
        gc.enable()
    values = [rss for _, _, rss in samples[1:]]
    low, high = min(values), max(values)
    print(f"rss after warm-up: min {low:.1f} MiB, max {high:.1f} MiB, drift {(high - low) / low:.1%}; "
          f"first {values[0]:.1f}, last {values[-1]:.1f} MiB; {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
