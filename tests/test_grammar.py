"""Constrained decoding: the Sampler's constraint hook, and llguidance grammars on the real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fakes import AllowedSet

from edgegen.errors import EdgegenError
from edgegen.sampling import Sampler, SamplingConfig


@pytest.mark.parametrize("config", [SamplingConfig(), SamplingConfig(temperature=1.0, top_k=5, top_p=0.9, seed=1),
                                    SamplingConfig(repetition_penalty=1.3)])
def test_constrained_sampler_picks_only_allowed_tokens_and_advances(config: SamplingConfig) -> None:
    rng = np.random.default_rng(0)
    allowed = [3, 17, 40]
    constraint = AllowedSet(64, allowed)
    sampler = Sampler(config, constraint)
    picks = []
    for _ in range(50):
        logits = rng.normal(size=64).astype(np.float32)
        logits[7] = 100.0  # the unconstrained favourite is never allowed
        picks.append(sampler.pick(logits, history=[3, 5]))
    assert set(picks) <= set(allowed)
    assert constraint.seen == picks
    assert np.all(sampler.distribution(logits, [])[[i for i in range(64) if i not in allowed]] == 0)


def test_unconstrained_sampler_unchanged() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=256).astype(np.float32)
    config = SamplingConfig(temperature=0.8, top_p=0.9, seed=3)
    a, b = Sampler(config), Sampler(config, None)
    assert [a.pick(logits, []) for _ in range(20)] == [b.pick(logits, []) for _ in range(20)]
    assert Sampler(SamplingConfig()).pick(logits, []) == int(np.argmax(logits))


def test_json_schema_constraint_on_real_tokenizer(int8_model: Path) -> None:
    from tokenizers import Tokenizer

    from edgegen.grammar import response_format_constraint
    from edgegen.manifest import read_manifest

    manifest = read_manifest(int8_model)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
              "required": ["n", "ok"], "additionalProperties": False}
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert response_format_constraint(int8_model, manifest, {"type": "text"}) is None
    rng = np.random.default_rng(0)
    tokenizer = Tokenizer.from_file(str(int8_model / manifest.tokenizer))
    for _ in range(5):  # random walks through the grammar: every finished one parses and validates
        sampler = Sampler(SamplingConfig(temperature=1.0, seed=int(rng.integers(1 << 30))),
                          response_format_constraint(int8_model, manifest, response_format))
        out: list[int] = []
        for _ in range(200):
            token = sampler.pick(rng.normal(size=manifest.vocab_size).astype(np.float32), out)
            if token in manifest.eos_token_ids:
                break
            out.append(token)
        value = json.loads(tokenizer.decode(out))
        assert set(value) == {"n", "ok"} and isinstance(value["n"], int) and isinstance(value["ok"], bool)


def test_bad_response_formats_are_one_line_errors() -> None:
    from edgegen.grammar import grammar_from_response_format

    assert grammar_from_response_format({"type": "text"}) is None
    for bad in ({"type": "xml"}, {"type": "json_schema"}, {"type": "regex", "regex": ""}, "json"):
        with pytest.raises(EdgegenError):
            grammar_from_response_format(bad)  # type: ignore[arg-type]
