"""Prefix reuse: a generate whose prompt extends what the session holds forwards only the rest,
and gives exactly what a cold run (a fresh Generator) gives."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgegen

BACKENDS = ["onnxruntime", "openvino"]
QUESTIONS = [
    "Name three primary colors.",
    "Which of them is the color of the sky?",
    "Write a Python function that returns that color as a string.",
]


def _count_prefill_rows(gen: edgegen.Generator) -> list[int]:
    """Rows of every forward of the generator's session (the first of a generate is its prefill)."""
    rows: list[int] = []
    session = gen.session
    forward = session.forward

    def counted(token_ids, last_only: bool = False):
        rows.append(len(token_ids))
        return forward(token_ids, last_only)

    session.forward = counted  # type: ignore[method-assign]
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_chat_turns_equal_cold_runs(backend: str, int8_model: Path) -> None:
    gen = edgegen.load(int8_model, backend=backend)
    rows = _count_prefill_rows(gen)
    messages: list[dict[str, str]] = []
    for turn, question in enumerate(QUESTIONS):
        messages.append({"role": "user", "content": question})
        rows.clear()
        warm = gen.generate(messages, max_new_tokens=40)
        cold = edgegen.load(int8_model, backend=backend).generate(messages, max_new_tokens=40)
        assert warm.token_ids == cold.token_ids, f"turn {turn + 1} on {backend} differs from a cold run"
        prompt = len(warm.prompt_token_ids)
        if turn == 0:
            assert rows[0] == prompt
        else:  # the previous turn's prompt and answer stayed in the cache
            assert rows[0] < prompt - 20, f"turn {turn + 1} prefilled {rows[0]} of {prompt} tokens"
        messages.append({"role": "assistant", "content": warm.text})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ["ar", "prompt-lookup"])
def test_repeated_prompt_forwards_one_token(backend: str, strategy: str, int8_model: Path) -> None:
    gen = edgegen.load(int8_model, backend=backend)
    rows = _count_prefill_rows(gen)
    prompt = "def bubble_sort(items):\n    for i in range(len(items)):\n"
    first = gen.generate(prompt, max_new_tokens=32, chat=False, strategy=strategy)
    rows.clear()
    again = gen.generate(prompt, max_new_tokens=32, chat=False, strategy=strategy)
    assert rows[0] == 1  # all but the last prompt token were kept
    assert again.token_ids == first.token_ids


@pytest.mark.parametrize("backend", BACKENDS)
def test_remembered_ids_follow_rollbacks(backend: str, int8_model: Path) -> None:
    # Prompt lookup verifies drafts and trims the rejected ones: what the session says it holds must be
    # exactly the prompt and the greedy continuation (the tokens whose keys and values it holds).
    gen = edgegen.load(int8_model, backend=backend)
    prompt = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    spec = gen.generate(prompt, max_new_tokens=48, chat=False, strategy="prompt-lookup")
    assert spec.stats.draft_accepted < spec.stats.draft_proposed  # rollbacks ran
    truth = spec.prompt_token_ids + edgegen.load(int8_model, backend=backend).generate(
        prompt, max_new_tokens=64, chat=False, strategy="ar").token_ids
    held = gen.session.position
    assert held >= len(spec.prompt_token_ids) + len(spec.token_ids) - 1
    assert gen.session.common_prefix(truth) == held
