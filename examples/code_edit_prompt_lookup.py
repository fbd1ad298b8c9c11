"""Prompt lookup: when the answer repeats the prompt (code edits, summaries), drafts copied from the
prompt are verified in one forward. Output is token-identical to plain greedy decoding.

    python examples/code_edit_prompt_lookup.py
"""

import edgegen

SOURCE = '''def mean(values):
    total = 0
    for v in values:
        total += v
    return total / len(values)
'''


def main() -> None:
    gen = edgegen.load()  # every forward computes its rows alike: what makes identity possible
    prompt = f"Rename the variable `total` to `acc` in this function and return the code only:\n\n{SOURCE}"
    for strategy in ("ar", "prompt-lookup"):
        result = gen.generate(prompt, max_new_tokens=96, strategy=strategy)
        s = result.stats
        print(f"--- {strategy}: {s.tokens_per_s:.1f} tokens/s, {s.tokens_per_step:.2f} tokens per target step, "
              f"acceptance {s.acceptance_rate:.0%}")
        print(result.text)


if __name__ == "__main__":
    main()
