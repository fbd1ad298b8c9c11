"""Lexical Unit Decoding: the LUD-tuned SmolLM2 shipped with edgegen decodes a run of tokens it is sure of in
one forward. Compare plain AR, LUD at the model's default confidence threshold (0.7) and the verified mode
(token-identical to AR). Lower thresholds accept more tokens per forward and lose quality fast with this
135M model (at 0.5 this prompt's answer falls apart after the code block); see docs/lud.md.

    python examples/lexical_units.py
The first run builds the tuned model into the cache (about two minutes, needs the export extras).
"""

import edgegen

PROMPT = "Write a Python function that checks whether a string is a palindrome."


def main() -> None:
    gen = edgegen.load("default-lud")  # rows computed alike in every forward: the verified mode can equal AR
    runs = [("ar", {}), ("lexical", {}), ("lexical verified", {"threshold": 0.5, "verified": True})]
    texts = {}
    for label, options in runs:
        strategy = "ar" if label == "ar" else "lexical"
        result = gen.generate(PROMPT, max_new_tokens=96, strategy=strategy, **options)
        s = result.stats
        texts[label] = result.text
        print(f"--- {label}: {s.tokens_per_s:.1f} tokens/s, {s.tokens_per_step:.2f} tokens per forward")
        print(result.text)
    print(f"\nverified mode identical to AR: {texts['lexical verified'] == texts['ar']}")


if __name__ == "__main__":
    main()
