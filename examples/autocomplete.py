"""Show a user three different completions of what they are typing, for about the cost of one (superposed decoding).

    python examples/autocomplete.py "def read_config(path):"

Each draft's score is its mean log-probability per token under the model (exp(-score) is its perplexity),
so a fixed threshold hides the drafts the model itself finds unlikely.
"""

import math
import sys

import edgegen

MIN_SCORE = -1.5  # mean log-prob per token; drafts below it (perplexity > e^1.5 = 4.5) are not shown


def main() -> None:
    typed = " ".join(sys.argv[1:]) or "def read_config(path):"
    gen = edgegen.load(embeddings=True)  # the input-embedding graphs superposed decoding feeds
    result = gen.generate(typed, max_new_tokens=16, chat=False, strategy="superposed", num_drafts=3)
    for rank, draft in enumerate(result.drafts, 1):
        shown = "" if draft.score >= MIN_SCORE else "  [hidden: below the threshold]"
        ppl = math.exp(-draft.score)
        print(f"{rank}. (score {draft.score:.2f}, perplexity {ppl:.1f}) {typed}{draft.text!r}{shown}")
    print(f"[{result.stats.decode_ms + result.stats.ttft_ms:.0f} ms for {len(result.drafts)} drafts]")


if __name__ == "__main__":
    main()
