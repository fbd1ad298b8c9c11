"""Constrained decoding overhead per token: llguidance mask + advance against an AR decode step.

    python scripts/constraint_overhead.py [--model DIR] [--runs 3]

Generates a JSON-schema answer (sampling, T=0.7) with a timed constraint, then the same number of
tokens unconstrained (strategy ar, EOS ignored), and prints both per-token costs and their ratio.
"""

import argparse
import statistics
import time

import numpy as np

import edgegen
from edgegen.grammar import grammar_from_response_format, grammars_for

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "city", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 40}, "city": {"type": "string", "maxLength": 40},
                         "age": {"type": "integer"},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 6}}}
MESSAGES = [{"role": "user", "content": "Describe a person called Ana from Lisbon as JSON with some tags."}]


class Timed:
    """A constraint that times the one it wraps."""

    def __init__(self, constraint: object) -> None:
        self.constraint, self.seconds, self.steps = constraint, 0.0, 0

    def allowed(self) -> np.ndarray:
        start = time.perf_counter()
        mask = self.constraint.allowed()
        self.seconds += time.perf_counter() - start
        self.steps += 1
        return mask

    def consume(self, tokens: list[int]) -> int:
        start = time.perf_counter()
        n = self.constraint.consume(tokens)
        self.seconds += time.perf_counter() - start
        return n

    def rollback(self, n: int) -> None:
        start = time.perf_counter()
        self.constraint.rollback(n)
        self.seconds += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    gen = edgegen.load(args.model, backend=args.backend, max_length=1024)
    grammar = grammar_from_response_format({"type": "json_schema", "json_schema": {"schema": SCHEMA}})
    ratios = []
    for run in range(args.runs):
        timed = Timed(grammars_for(gen.folder, gen.manifest).constraint(grammar))
        constrained = gen.generate(MESSAGES, max_new_tokens=120, temperature=0.7, seed=run, constraint=timed)
        n = len(constrained.token_ids)
        plain = gen.generate(MESSAGES, max_new_tokens=n, temperature=0.7, seed=run, strategy="ar", ignore_eos=True)
        step_ms = plain.stats.decode_ms / max(1, n - 1)
        mask_ms = timed.seconds / timed.steps * 1e3
        ratios.append(mask_ms / step_ms)
        print(f"run {run}: {n} tokens, constraint {mask_ms:.3f} ms/token, AR step {step_ms:.2f} ms "
              f"({ratios[-1]:.1%}); {constrained.text!r}")
    print(f"median overhead: {statistics.median(ratios):.2%} of a decode step (plus applying the mask to the logits)")


if __name__ == "__main__":
    main()
