"""Superposed and lexical decoding on the NPU path against edgegen NPU AR, same session, same run.

`edgegen bench --device NPU` has no rows for them (their benches have no --device). Greedy, the bench's first code
and first chat prompt, N new tokens with EOS ignored, one warm-up per strategy; decode tokens/s as the bench counts
them ((new tokens - 1) / first to last token). docs/npu.md has a run.

usage: EDGEGEN_NPUW_DEVICES=CPU python scripts/npu_strategies.py NPU_EXPORT LUD_NPU_EXPORT|- [N]
"""

from __future__ import annotations

import sys
import time

import edgegen
from edgegen.bench.runner import load_prompts

PROMPTS = load_prompts("all", 1)


def rate(gen: edgegen.Generator, strategy: str, tokens: int, **options: object) -> tuple[float, float, list]:
    """(decode tokens/s, tokens per target step, each prompt's tokens) of one strategy over the prompts."""
    gen.generate("Hello", max_new_tokens=4, chat=False, strategy=strategy, **options)  # warm-up (and any compile)
    new, seconds, steps, outputs = 0, 0.0, 0, []
    for prompt in PROMPTS:
        result = gen.generate(prompt.prompt, max_new_tokens=tokens, chat=prompt.chat, strategy=strategy,
                              ignore_eos=True, **options)
        new += result.stats.new_tokens - 1
        seconds += result.stats.decode_ms / 1000
        steps += result.stats.target_steps
        outputs.append(result.token_ids)
    return new / seconds, new / max(steps, 1), outputs


def compare(gen: edgegen.Generator, label: str, strategies: list[tuple[str, str, dict]], tokens: int) -> None:
    base, _, want = rate(gen, "ar", tokens)
    print(f"{label} AR: {base:.2f} tok/s", flush=True)
    for name, strategy, options in strategies:
        speed, per_step, got = rate(gen, strategy, tokens, **options)
        same = sum(a == b for a, b in zip(got, want, strict=True))
        print(f"{label} {name}: {speed:.2f} tok/s  x{speed / base:.2f} of AR  {per_step:.2f} tokens/step  "
              f"identical to AR {same}/{len(want)}", flush=True)


def main() -> None:
    model, lud = sys.argv[1], sys.argv[2]
    tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    start = time.time()
    compare(edgegen.load(model, device="NPU"), "target",
            [("superposed (3 drafts, default)", "superposed", {}),
             ("superposed (1 draft, alpha 0)", "superposed", {"num_drafts": 1, "alpha": 0.0})], tokens)
    if lud != "-":
        compare(edgegen.load(lud, device="NPU"), "lud",
                [("lexical verified", "lexical", {"verified": True}), ("lexical unverified", "lexical", {})], tokens)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
