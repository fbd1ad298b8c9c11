"""Fuzzing generate()'s arguments and chat messages: a result or one EdgegenError, never another exception.

Each example ends (max_new_tokens stays small); the deadline is generous, there to turn a run that
would never end into a failure, not to time anything.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fake_generator import fake_generator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgegen
from edgegen import EdgegenError
from edgegen.generator import Generator
from edgegen.results import GenerationResult

ROLES = ["system", "user", "assistant", "tool"]
STRATEGIES = ["auto", "ar", "prompt-lookup", "speculative", "superposed", "lexical", "telepathy"]

junk = st.one_of(st.none(), st.booleans(), st.binary(max_size=4), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.text(max_size=4), junk)
text = st.text(max_size=40)  # any code points, lone surrogates included
message = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(ROLES), text, junk), "content": st.one_of(text, junk, numbers)})
prompt = st.one_of(text, st.lists(message, max_size=3), st.lists(st.integers(-3, 60_000), max_size=6),
                   st.lists(st.booleans(), max_size=3), st.binary(max_size=8), junk)
arguments = st.fixed_dictionaries({}, optional={
    "max_new_tokens": st.one_of(st.integers(-2, 6), numbers),
    "temperature": st.one_of(st.floats(0, 2), numbers),
    "top_k": st.one_of(st.integers(-2, 60), numbers),
    "top_p": st.one_of(st.floats(0, 1), numbers),
    "repetition_penalty": st.one_of(st.floats(0, 3), numbers),
    "seed": st.one_of(st.integers(-5, 2**70), numbers),
    "stop": st.one_of(text, st.lists(st.one_of(text, junk), max_size=3), junk),
    "chat": st.one_of(st.booleans(), junk),
    "strategy": st.one_of(st.sampled_from(STRATEGIES), junk),
    "ignore_eos": st.one_of(st.booleans(), junk),
    "num_draft_tokens": st.one_of(st.integers(-2, 8), numbers),
})

# well-typed values, edges included: these reach the strategies and the sampler
valid_arguments = st.fixed_dictionaries({"max_new_tokens": st.integers(1, 6)}, optional={
    "temperature": st.one_of(st.just(0.0), st.floats(1e-6, 100)),
    "top_k": st.integers(0, 10**6),
    "top_p": st.floats(1e-9, 1),
    "repetition_penalty": st.floats(0.01, 100),
    "seed": st.integers(0, 2**70),
    "stop": st.one_of(st.text(min_size=1, max_size=4), st.lists(st.text(min_size=1, max_size=4), max_size=3)),
    "chat": st.booleans(),
    "strategy": st.sampled_from(STRATEGIES),
    "ignore_eos": st.booleans(),
})
valid_message = st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": st.text(max_size=20)})
valid_prompt = st.one_of(st.text(min_size=1, max_size=40), st.lists(st.integers(0, 300), min_size=1, max_size=6),
                         st.lists(valid_message, min_size=1, max_size=3))


def _small(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keep every run short: a valid max_new_tokens is at most 6; an absent one becomes 4."""
    kwargs.setdefault("max_new_tokens", 4)
    return kwargs


def _check(gen: Generator, prompt: object, kwargs: dict[str, Any]) -> None:
    strategy = kwargs.get("strategy")
    if strategy not in ("prompt-lookup", "speculative", "auto", None):
        kwargs.pop("num_draft_tokens", None)  # an option only drafting strategies take (others: a clear error)
    try:
        result = gen.generate(prompt, **kwargs)  # type: ignore[arg-type]
    except EdgegenError as e:
        assert str(e) and "\n" not in str(e)  # one line
        return
    assert isinstance(result, GenerationResult)
    assert len(result.token_ids) <= kwargs["max_new_tokens"]
    assert result.finish_reason in ("eos", "stop", "length")


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Generator:
    return fake_generator(tmp_path_factory.mktemp("fuzz"), delay_s=0.0)


@settings(max_examples=400, deadline=timedelta(seconds=60), suppress_health_check=[HealthCheck.too_slow])
@given(prompt=prompt, kwargs=arguments)
def test_generate_never_raises_anything_but_edgegen_error(fake: Generator, prompt: object,
                                                          kwargs: dict[str, Any]) -> None:
    _check(fake, prompt, _small(kwargs))


@settings(max_examples=300, deadline=timedelta(seconds=60), suppress_health_check=[HealthCheck.too_slow])
@given(prompt=valid_prompt, kwargs=valid_arguments)
def test_well_typed_arguments_generate_or_say_why(fake: Generator, prompt: object, kwargs: dict[str, Any]) -> None:
    _check(fake, prompt, kwargs)


@settings(max_examples=200, deadline=timedelta(seconds=60), suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(message, min_size=1, max_size=4))
def test_chat_messages_never_raise_anything_but_edgegen_error(fake: Generator, messages: list[dict]) -> None:
    _check(fake, messages, {"max_new_tokens": 3})


@pytest.fixture(scope="module")
def real(int8_model: Path) -> Generator:
    return edgegen.load(int8_model, backend="onnxruntime")


@settings(max_examples=25, deadline=timedelta(seconds=120),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(prompt=prompt, kwargs=arguments)
def test_generate_on_the_real_model(real: Generator, prompt: object, kwargs: dict[str, Any]) -> None:
    _check(real, prompt, _small(kwargs))
