"""Constrained decoding beyond the server: ``response_format`` in the Python API and the CLI, and
constraints under prompt lookup and speculative decoding (drafts checked against the grammar).

The strategy tests run the real loops: a statistical test on tiny in-process models with a
state-dependent constraint (sampling keeps constrained AR's exact distribution), and on the real
int8 model with llguidance JSON schemas (greedy drafting strategies give constrained AR's tokens).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from fakes import TinyLM
from test_speculative_sampling import chi_square_pvalue

from edgegen.errors import EdgegenError
from edgegen.sampling import Sampler, SamplingConfig, apply_constraint, distribution
from edgegen.strategies.autoregressive import Autoregressive
from edgegen.strategies.base import DecodeRequest
from edgegen.strategies.drafters import LookupThenModel, ModelDrafter, PromptLookupDrafter
from edgegen.strategies.speculative import Speculative

# --- tiny models: sampling under a constraint stays lossless -------------------------------------

VOCAB = 5
PROMPT = [1, 3, 1, 3, 1]  # repeats: prompt lookup proposes drafts, often ones the constraint refuses
NEW = 3
RUNS = 6000


def banned_after(last: int | None) -> set[int]:
    """The toy grammar: no token twice in a row, nor the token two above the last (4 cannot start)."""
    return {4} if last is None else {last, (last + 2) % VOCAB}


class NoRepeat:
    """A state-dependent constraint with the Constraint protocol; counts its rollbacks."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.rolled_back = 0

    def allowed(self) -> np.ndarray:
        mask = np.ones(VOCAB, bool)
        mask[list(banned_after(self.tokens[-1] if self.tokens else None))] = False
        return mask

    def consume(self, tokens: Sequence[int]) -> int:
        for n, t in enumerate(tokens):
            if not self.allowed()[t]:
                return n
            self.tokens.append(int(t))
        return len(tokens)

    def rollback(self, n: int) -> None:
        assert 0 <= n <= len(self.tokens)
        del self.tokens[len(self.tokens) - n :]
        self.rolled_back += n


def exact_constrained_ar(config: SamplingConfig) -> dict[tuple[int, ...], float]:
    target = TinyLM(seed=1, sharpness=1.5)
    probs = {}
    for seq in np.ndindex(*(VOCAB,) * NEW):
        p, context, last = 1.0, list(PROMPT), None
        for t in seq:
            allowed = np.ones(VOCAB, bool)
            allowed[list(banned_after(last))] = False
            p *= distribution(apply_constraint(target.logits_after(context), allowed), context, config)[t]
            context.append(t)
            last = t
        probs[tuple(int(t) for t in seq)] = p
    return probs


def sample_constrained(strategy_factory, config: SamplingConfig, runs: int,
                       in_step: bool = True) -> tuple[Counter, int]:
    counts: Counter = Counter()
    rolled_back = 0
    for seed in range(runs):
        constraint = NoRepeat()
        sampler = Sampler(SamplingConfig(**{**config.__dict__, "seed": seed}), constraint)
        request = DecodeRequest(TinyLM(seed=1, sharpness=1.5), list(PROMPT), sampler, NEW)
        tokens: list[int] = []
        for new in strategy_factory().decode(request):
            tokens += new
            if len(tokens) >= NEW:
                break
        # the constraint is always in step with the output: it holds exactly the tokens produced
        assert constraint.tokens == tokens or not in_step
        counts[tuple(tokens[:NEW])] += 1
        rolled_back += constraint.rolled_back
    return counts, rolled_back


def model_drafter() -> Speculative:
    return Speculative(ModelDrafter(TinyLM(seed=2, sharpness=1.0)), num_draft_tokens=2, adaptive=False)


def prompt_lookup() -> Speculative:
    return Speculative(PromptLookupDrafter(max_ngram=2), num_draft_tokens=3, adaptive=False)


def lookup_then_model() -> Speculative:
    drafter = LookupThenModel(ModelDrafter(TinyLM(seed=2, sharpness=1.0)), PromptLookupDrafter(max_ngram=2))
    return Speculative(drafter, num_draft_tokens=2, adaptive=False)


@pytest.mark.slow  # 6000 runs per config (~30 s each): the full suite runs them
@pytest.mark.parametrize("config", [
    pytest.param(SamplingConfig(temperature=1.0), id="plain"),
    # the same check through the top-p and penalty transforms (~30 s): scripts/test.sh --all runs it
    pytest.param(SamplingConfig(temperature=1.2, top_p=0.8, repetition_penalty=1.3), id="top-p+penalty",
                 marks=pytest.mark.extended)])
def test_constrained_speculative_sampling_matches_constrained_ar(config: SamplingConfig) -> None:
    expected = exact_constrained_ar(config)
    for factory in (Autoregressive, model_drafter, prompt_lookup, lookup_then_model):
        counts, rolled_back = sample_constrained(factory, config, RUNS)
        assert chi_square_pvalue(counts, expected, RUNS) > 1e-3, factory
        if factory in (model_drafter, lookup_then_model):
            assert rolled_back > 0  # the drafter drafted under the constraint and rolled it back


def test_the_check_catches_verification_without_the_constraint(monkeypatch: pytest.MonkeyPatch) -> None:
    # Verifying against the unconstrained p (the constraint only consulted for the bonus token) lets
    # refused tokens through: the same check must fail.
    real = Sampler.distribution

    def unmasked(self: Sampler, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        return distribution(logits, history, self.config)

    monkeypatch.setattr(Sampler, "admissible", lambda self, tokens: len(tokens))
    monkeypatch.setattr(Sampler, "advance", lambda self, tokens: None)
    monkeypatch.setattr(Sampler, "distribution", unmasked)
    config = SamplingConfig(temperature=1.0)
    counts, _ = sample_constrained(prompt_lookup, config, 2000, in_step=False)
    monkeypatch.setattr(Sampler, "distribution", real)
    assert chi_square_pvalue(counts, exact_constrained_ar(config), 2000) < 1e-6


def test_greedy_constrained_drafting_equals_constrained_ar_on_tiny_models() -> None:
    for seed in range(4):
        outputs = []
        for factory in (Autoregressive, prompt_lookup, lookup_then_model,
                        lambda s=seed: Speculative(ModelDrafter(TinyLM(seed=s + 10, sharpness=1.0)), 3)):
            constraint = NoRepeat()
            request = DecodeRequest(TinyLM(seed=1 + seed, sharpness=1.5), list(PROMPT),
                                    Sampler(SamplingConfig(), constraint), 20)
            tokens: list[int] = []
            for new in factory().decode(request):
                tokens += new
                if len(tokens) >= 20:
                    break
            assert constraint.tokens == tokens
            outputs.append(tokens[:20])
        assert all(o == outputs[0] for o in outputs[1:]), outputs
        assert all(b not in banned_after(a) for a, b in zip(outputs[0], outputs[0][1:], strict=False))


# --- the CLI: bad --json-schema input is one line, before any model work ------------------------

def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from edgegen.cli import main

    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(("content", "needle"), [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON schema object"),
    ('{"type": "object", "properties": {"a": {"type": "integer", "minimum": "x"}}}', "bad JSON schema"),
    (None, "cannot read it"),
])
def test_bad_json_schema_file_is_one_error_line(content: str | None, needle: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGEN_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    rc, out, err = _run_cli(["run", "--json-schema", str(path), "hello"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc != 0 and not out
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not (tmp_path / "cache").exists()  # refused before a default model was exported


def test_json_schema_and_json_object_together_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "schema.json"
    path.write_text('{"type": "object"}', encoding="utf-8")
    rc, _, err = _run_cli(["run", "--json-schema", str(path), "--json-object", "hello"], capsys)
    assert rc != 0 and err.startswith("error:") and "not both" in err


# --- the real model: response_format in the API and the CLI, drafting strategies under a schema ---

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
                         "city": {"type": "string", "maxLength": 24}},
          "required": ["name", "age", "city"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
PROMPTS = ["Alice Smith is 31 and lives in Paris. Give her record as JSON with name, age and city.",
           "Bob Jones, aged 45, lives in Berlin. Reply with JSON: name, age, city.",
           "Extract name, age and city as JSON: 'Carol Diaz (27) moved to Lisbon last year.'"]


def _tokens(gen, prompt: str, strategy: str, **kwargs) -> tuple[list[int], object]:
    result = gen.generate(prompt, max_new_tokens=64, strategy=strategy, response_format=FORMAT, **kwargs)
    assert result.finish_reason == "eos", result.text
    jsonschema.validate(json.loads(result.text), SCHEMA)
    return result.token_ids, result.stats


def test_greedy_constrained_drafting_equals_constrained_ar(int8_model: Path) -> None:
    import edgegen

    gen = edgegen.load(int8_model, draft=int8_model)  # the target as its own drafter: long accepted drafts
    accepted = Counter()
    for prompt in PROMPTS:
        ar, _ = _tokens(gen, prompt, "ar")
        for strategy in ("prompt-lookup", "speculative"):
            tokens, stats = _tokens(gen, prompt, strategy)
            assert tokens == ar, (strategy, prompt)
            accepted[strategy] += stats.draft_accepted
        assert gen.generate(prompt, max_new_tokens=64, response_format=FORMAT).stats.strategy == "speculative"
    assert accepted["prompt-lookup"] > 0 and accepted["speculative"] > 0  # drafts really were used
    plain = edgegen.load(int8_model)
    result = plain.generate(PROMPTS[0], max_new_tokens=64, response_format=FORMAT)
    assert result.stats.strategy == "prompt-lookup"  # auto keeps prompt lookup when constrained and greedy
    with pytest.raises(EdgegenError, match="cannot follow a constraint"):
        plain.generate(PROMPTS[0], strategy="superposed", response_format=FORMAT)
    with pytest.raises(EdgegenError, match="not both"):
        plain.generate(PROMPTS[0], response_format=FORMAT, constraint=object())


def test_sampled_constrained_drafting_always_parses(int8_model: Path) -> None:
    import edgegen

    gen = edgegen.load(int8_model, draft=int8_model)
    for seed, prompt in enumerate(PROMPTS[:2]):
        for strategy in ("prompt-lookup", "speculative"):
            _tokens(gen, prompt, strategy, temperature=0.8, top_p=0.95, seed=seed)


def test_stream_with_response_format_and_json_object(int8_model: Path) -> None:
    import edgegen

    gen = edgegen.load(int8_model)
    with gen.stream(PROMPTS[1], max_new_tokens=64, response_format=FORMAT) as stream:
        text = "".join(stream)
    assert text == gen.generate(PROMPTS[1], max_new_tokens=64, response_format=FORMAT).text
    jsonschema.validate(json.loads(text), SCHEMA)
    obj = gen.generate(PROMPTS[2], max_new_tokens=96, response_format={"type": "json_object"})
    assert obj.finish_reason == "eos" and isinstance(json.loads(obj.text), dict)
    with pytest.raises(EdgegenError, match="unknown response_format"):
        gen.generate(PROMPTS[0], response_format={"type": "xml"})


def test_cli_json_schema_output_validates(int8_model: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "person.json"
    path.write_text(json.dumps(SCHEMA), encoding="utf-8")
    rc, out, err = _run_cli(["run", "--model", str(int8_model), "--json-schema", str(path), "--max-new-tokens",
                             "64", "--json", PROMPTS[0]], capsys)
    assert rc == 0, err
    jsonschema.validate(json.loads(json.loads(out)["text"]), SCHEMA)
