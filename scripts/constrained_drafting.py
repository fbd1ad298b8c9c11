"""Constrained decoding with and without drafting: tokens/s, target steps and acceptance per strategy.

Greedy, a JSON schema, the prompts of tests/test_constrained.py; every strategy must give AR's tokens.
Usage: python scripts/constrained_drafting.py [--model DIR] [--draft DIR]
"""

from __future__ import annotations

import argparse
import statistics

import edgegen

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
                         "city": {"type": "string", "maxLength": 24}},
          "required": ["name", "age", "city"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
PROMPTS = ["Alice Smith is 31 and lives in Paris. Give her record as JSON with name, age and city.",
           "Bob Jones, aged 45, lives in Berlin. Reply with JSON: name, age, city.",
           "Extract name, age and city as JSON: 'Carol Diaz (27) moved to Lisbon last year.'"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--draft", default=None, help="draft model for 'speculative' (omitted: not run)")
    args = parser.parse_args()
    gen = edgegen.load(args.model, draft=args.draft)
    strategies = ["ar", "prompt-lookup"] + (["speculative"] if args.draft else [])
    for prompt in PROMPTS:  # warm-up
        gen.generate(prompt, max_new_tokens=8, strategy="ar", response_format=FORMAT)
    for strategy in strategies:
        speeds, steps, tokens, accepted, proposed = [], 0, 0, 0, 0
        for prompt in PROMPTS:
            result = gen.generate(prompt, max_new_tokens=64, strategy=strategy, response_format=FORMAT)
            reference = gen.generate(prompt, max_new_tokens=64, strategy="ar", response_format=FORMAT)
            assert result.token_ids == reference.token_ids, (strategy, prompt)
            s = result.stats
            speeds.append(s.tokens_per_s)
            steps, tokens = steps + s.target_steps, tokens + s.new_tokens
            accepted, proposed = accepted + s.draft_accepted, proposed + s.draft_proposed
        print(f"{strategy:14s} median {statistics.median(speeds):5.1f} tokens/s, {tokens} tokens in {steps} target "
              f"steps after prefill, {accepted}/{proposed} draft tokens accepted")


if __name__ == "__main__":
    main()
