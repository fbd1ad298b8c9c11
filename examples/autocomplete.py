"""Show a user three completions of what they are typing, for the cost of one (superposed decoding).

    python examples/autocomplete.py "def read_config(path):"
"""

import sys

import edgegen


def main() -> None:
    typed = " ".join(sys.argv[1:]) or "def read_config(path):"
    gen = edgegen.load(embeddings=True)  # the input-embedding graphs superposed decoding feeds
    result = gen.generate(typed, max_new_tokens=24, chat=False, strategy="superposed", num_drafts=3)
    for rank, draft in enumerate(result.drafts, 1):
        print(f"{rank}. (score {draft.score:.2f}) {typed}{draft.text!r}")
    print(f"[{result.stats.decode_ms + result.stats.ttft_ms:.0f} ms for {len(result.drafts)} drafts]")


if __name__ == "__main__":
    main()
