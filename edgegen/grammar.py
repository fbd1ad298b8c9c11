"""Constrained decoding with llguidance: JSON schema, regex and Lark grammars as a sampling Constraint.

llguidance computes, per step, a bitmask of the tokens that keep the output inside the grammar
(NumPy API, no torch); ``GrammarConstraint`` hands it to the Sampler as a boolean mask and feeds
back each token that joins the sequence (``consume``), and rolls back tokens speculative
decoding only tried (``rollback``). Once the grammar is complete only end-of-sequence tokens are allowed.
llguidance is an optional dependency (the ``serve`` extra): importing this module does not need it,
building a constraint does.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.manifest import Manifest

_INSTALL = "constrained decoding needs llguidance: pip install 'edgegen[serve]'"


def require_llguidance() -> Any:
    """The llguidance module, or a one-line EdgegenError naming the extra to install."""
    try:
        import llguidance
        import llguidance.numpy
    except ImportError:
        raise EdgegenError(_INSTALL) from None
    return llguidance


def grammar_from_response_format(response_format: dict[str, Any]) -> str | None:
    """The llguidance grammar for an OpenAI-style ``response_format``; None for plain text.

    {"type": "text"} | {"type": "json_object"} | {"type": "json_schema", "json_schema": {"schema": {...}}}
    and edgegen's own {"type": "regex", "regex": "..."} | {"type": "lark", "lark": "..."}.
    """
    if not isinstance(response_format, dict):
        raise EdgegenError("response_format must be an object with a 'type'")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return grammar_from_json_schema({"type": "object"})
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise EdgegenError("response_format json_schema needs json_schema.schema (a JSON schema object)")
        return _checked(grammar_from_json_schema(schema), "JSON schema")
    if kind in ("regex", "lark"):
        matcher = require_llguidance().LLMatcher
        text = response_format.get(kind)
        if not isinstance(text, str) or not text:
            raise EdgegenError(f"response_format {kind} needs '{kind}': a non-empty string")
        return _checked(matcher.grammar_from_regex(text) if kind == "regex" else matcher.grammar_from_lark(text), kind)
    raise EdgegenError(f"unknown response_format type '{kind}' (known: text, json_object, json_schema, regex, lark)")


def _checked(grammar: str, what: str) -> str:
    """``grammar`` once llguidance compiled it: a bad schema, regex or Lark text fails here, before any
    generation (a request's 400, the CLI's one line), not when its first constraint is built."""
    problem = require_llguidance().LLMatcher.validate_grammar(grammar)
    if problem and not problem.startswith("WARNING"):
        raise EdgegenError(f"bad {what}: {' '.join(problem.split())}")
    return grammar


def grammar_from_json_schema(schema: dict[str, Any]) -> str:
    """An llguidance grammar for JSON following ``schema``, written compactly (no free whitespace)."""
    matcher = require_llguidance().LLMatcher
    try:
        # Flexible whitespace lets a small model pad forever with newlines; compact JSON cannot.
        return matcher.grammar_from_json_schema(schema, overrides={"whitespace_flexible": False})
    except ValueError as e:
        raise EdgegenError(f"bad JSON schema: {e}") from None


class GrammarConstraint:
    """One sequence's position in a grammar (an llguidance LLMatcher): the sampling Constraint."""

    def __init__(self, tokenizer: Any, grammar: str, vocab_size: int, eos_token_ids: Sequence[int] = ()) -> None:
        llg = require_llguidance()
        self._matcher = llg.LLMatcher(tokenizer, grammar, log_level=0)
        if self._matcher.is_error():
            raise EdgegenError(f"bad grammar: {self._matcher.get_error()}")
        self._vocab = vocab_size
        self._eos = frozenset(eos_token_ids)
        # per consumed token, whether the matcher counted it: an end-of-sequence token after the grammar
        # stopped by itself is accepted without being recorded, so rollback must not count it
        self._counted: list[bool] = []
        self._bitmask = llg.numpy.allocate_token_bitmask(1, tokenizer.vocab_size)
        self._fill = llg.numpy.fill_next_token_bitmask

    def allowed(self) -> np.ndarray:
        self._fill(self._matcher, self._bitmask)
        self._check()
        # bit i of int32 word j is token 32 j + i: little-endian bytes, bits unpacked least significant first
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        return bits[: self._vocab].view(np.bool_)

    def consume(self, tokens: Sequence[int]) -> int:
        tokens = [int(t) for t in tokens]
        n = 0 if self._matcher.is_stopped() else self._matcher.try_consume_tokens(tokens)
        self._check()
        self._counted.extend([True] * n)
        while n < len(tokens) and tokens[n] in self._eos and self._matcher.is_stopped():
            self._counted.append(False)
            n += 1
        return n

    def rollback(self, n: int) -> None:
        if n > len(self._counted):
            raise EdgegenError(f"constrained decoding failed: rollback of {n} tokens, {len(self._counted)} consumed")
        counted = sum(self._counted[len(self._counted) - n :])
        del self._counted[len(self._counted) - n :]
        if counted:
            self._matcher.rollback(counted)
            self._check()

    @property
    def complete(self) -> bool:
        """The output so far is a complete sentence of the grammar."""
        return self._matcher.is_accepting() or self._matcher.is_stopped()

    def _check(self) -> None:
        if self._matcher.is_error():
            raise EdgegenError(f"constrained decoding failed: {self._matcher.get_error()}")


class Grammars:
    """Builds GrammarConstraints for one model's tokenizer (the llguidance tokenizer is built once, ~1 s)."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: list[int]) -> None:
        llg = require_llguidance()
        if not eos_token_ids:
            raise EdgegenError("constrained decoding needs a model with an end-of-sequence token")
        self._tokenizer = llg.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=list(eos_token_ids))
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)

    def constraint(self, grammar: str) -> GrammarConstraint:
        """A fresh constraint (start of the grammar) for one sequence."""
        return GrammarConstraint(self._tokenizer, grammar, self.vocab_size, self.eos_token_ids)


@lru_cache(maxsize=4)
def _grammars(tokenizer_path: str, vocab_size: int, eos: tuple[int, ...]) -> Grammars:
    return Grammars(Path(tokenizer_path).read_text(encoding="utf-8"), vocab_size, list(eos))


def grammars_for(folder: Path, manifest: Manifest) -> Grammars:
    """The (cached) Grammars of an exported model folder."""
    path = (Path(folder) / manifest.tokenizer).resolve()
    return _grammars(str(path), manifest.vocab_size, tuple(manifest.eos_token_ids))


def response_format_constraint(folder: Path, manifest: Manifest,
                               response_format: dict[str, Any]) -> GrammarConstraint | None:
    """A fresh constraint for one generation under ``response_format`` (None for plain text), e.g.
    ``gen.generate(prompt, constraint=response_format_constraint(gen.folder, gen.manifest, {...}))``."""
    grammar = grammar_from_response_format(response_format)
    return None if grammar is None else grammars_for(folder, manifest).constraint(grammar)
