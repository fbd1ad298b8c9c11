"""The prompt cache (issue 17): interleaved conversations each keep their prefix, answers equal cold runs,
least recently used snapshots go first within the budget, and a snapshot restores the exact cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fake_generator import PrefixSumLM, fake_generator
from fakes import SnapshotSession, TinyLM

import edgegen
from edgegen.generator import Generator
from edgegen.prompt_cache import PromptCache
from edgegen.runtimes.base import Session

BACKENDS = ["onnxruntime", "openvino"]
CONVERSATIONS = {
    "A": ["Name three primary colors.", "Which of them is the color of the sky?", "Why is the sky that color?"],
    "B": ["Write a Python function that adds two numbers.", "Now make it add three numbers.", "Add a docstring."],
}


class CachingPrefixSumLM(SnapshotSession, PrefixSumLM):
    pass


class CachingTinyLM(SnapshotSession, TinyLM):
    pass


def _count_forwarded_rows(session: Session) -> list[int]:
    """Rows of every forward of ``session`` (the first of a generate is its prefill)."""
    rows: list[int] = []
    forward = session.forward

    def counted(token_ids, last_only: bool = False, **kwargs):
        rows.append(len(token_ids))
        return forward(token_ids, last_only, **kwargs)

    session.forward = counted  # type: ignore[method-assign]
    return rows


def _interleave(gen: edgegen.Generator, cold: edgegen.Generator, turns: int, max_new_tokens: int) -> None:
    """Conversations A and B take turns on ``gen``; from its second turn on, each forwards only what its previous
    turn's prompt did not hold, and every answer equals ``cold``'s from an empty cache."""
    rows = _count_forwarded_rows(gen.session)
    messages: dict[str, list[dict[str, str]]] = {name: [] for name in CONVERSATIONS}
    previous: dict[str, list[int]] = {}
    for turn in range(turns):
        for name, questions in CONVERSATIONS.items():
            messages[name].append({"role": "user", "content": questions[turn]})
            rows.clear()
            warm = gen.generate(messages[name], max_new_tokens=max_new_tokens)
            cold.session.reset()
            assert warm.token_ids == cold.generate(messages[name], max_new_tokens=max_new_tokens).token_ids, \
                f"{name} turn {turn + 1} differs from a cold run"
            prompt = warm.prompt_token_ids
            if turn:  # the other conversation ran in between: without the cache this forwards (nearly) all
                assert prompt[: len(previous[name])] == previous[name]
                assert rows[0] <= len(prompt) - len(previous[name]), \
                    f"{name} turn {turn + 1} forwarded {rows[0]} of {len(prompt)} prompt tokens"
            previous[name] = prompt
            messages[name].append({"role": "assistant", "content": warm.text})


def _fake_pair(folder: Path, budget_bytes: int) -> tuple[Generator, Generator]:
    """A Generator over a fake that keeps prefixes and copies its cache, with a prompt cache; and a cold twin."""
    base = fake_generator(folder, delay_s=0)
    made = []
    for cache in (PromptCache(budget_bytes), None):
        session = CachingPrefixSumLM(base.manifest, base.manifest.vocab_size, row_s=0)
        made.append(Generator(base.folder, base.manifest, session, base.profile, prompt_cache=cache))  # type: ignore[arg-type]
    return made[0], made[1]


def test_interleaved_conversations_forward_only_their_new_tokens(tmp_path: Path) -> None:
    gen, cold = _fake_pair(tmp_path, budget_bytes=1 << 20)
    _interleave(gen, cold, turns=3, max_new_tokens=12)


def test_the_server_keeps_each_conversations_prefix(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from edgegen.serve import create_app

    gen, cold = _fake_pair(tmp_path, budget_bytes=1 << 20)
    rows = _count_forwarded_rows(gen.session)
    messages: dict[str, list[dict[str, str]]] = {name: [] for name in CONVERSATIONS}
    previous: dict[str, int] = {}
    with TestClient(create_app(gen, max_queue=4)) as client:
        for turn in range(2):
            for name, questions in CONVERSATIONS.items():
                messages[name].append({"role": "user", "content": questions[turn]})
                rows.clear()
                request = {"model": gen.manifest.name, "messages": messages[name], "max_tokens": 12, "temperature": 0}
                body = client.post("/v1/chat/completions", json=request).json()
                text, prompt = body["choices"][0]["message"]["content"], body["usage"]["prompt_tokens"]
                cold.session.reset()
                assert text == cold.generate(messages[name], max_new_tokens=12).text
                if turn:
                    assert rows[0] <= prompt - previous[name], f"{name} forwarded {rows[0]} of {prompt} tokens"
                previous[name] = prompt
                messages[name].append({"role": "assistant", "content": text})


def test_one_conversation_copies_nothing(tmp_path: Path) -> None:
    # A conversation that only extends what the session holds loses nothing: no snapshot is taken.
    gen, _ = _fake_pair(tmp_path, budget_bytes=1 << 20)
    prompt = gen.tokenizer.encode("Name three primary colors.")
    for question in CONVERSATIONS["A"][1:]:
        prompt += gen.generate(prompt, max_new_tokens=12, chat=False).token_ids + gen.tokenizer.encode(question)
    assert gen.session.snapshots == 0 and len(gen.prompt_cache) == 0


def _prefill(cache: PromptCache, session: CachingTinyLM, prompt: list[int]) -> int:
    """What a Generator and strategies.base.prefill do with ``prompt``; returns the rows forwarded."""
    cache.prepare(session, prompt)
    keep = min(session.common_prefix(prompt), len(prompt) - 1)
    session.trim(keep)
    session.forward(np.asarray(prompt[keep:]))
    return len(prompt) - keep


def test_least_recently_used_snapshot_goes_first() -> None:
    prompts = {name: [first, *range(5, 14)] for name, first in zip("WXYZ", range(4), strict=True)}  # 10 ids each
    session = CachingTinyLM(seed=0, sharpness=1.0, vocab=20)
    cache = PromptCache(budget_bytes=2 * 10 * 8 + 7)  # two 10-token snapshots (int64 ids in the fake)
    for name in "WXY":
        assert _prefill(cache, session, prompts[name]) == 10
    assert cache.keys() == [tuple(prompts["W"]), tuple(prompts["X"])]  # Y is in the session, not copied yet
    assert _prefill(cache, session, prompts["W"]) == 1  # restored: only the last prompt token forwarded
    assert cache.keys() == [tuple(prompts["W"]), tuple(prompts["Y"])]  # saving Y evicted X, the least recently used
    assert _prefill(cache, session, prompts["X"]) == 10  # evicted: prefilled in full
    assert _prefill(cache, session, prompts["Y"]) == 1
    assert cache.keys() == [tuple(prompts["Y"]), tuple(prompts["X"])] and cache.nbytes <= cache.budget_bytes
    assert _prefill(cache, session, prompts["W"]) == 10


def test_a_snapshot_beyond_the_budget_is_not_kept() -> None:
    session = CachingTinyLM(seed=0, sharpness=1.0, vocab=20)
    cache = PromptCache(budget_bytes=5 * 8)
    _prefill(cache, session, list(range(10)))
    assert _prefill(cache, session, list(range(10, 20))) == 10
    assert len(cache) == 0 and cache.nbytes == 0
    assert _prefill(cache, session, list(range(10))) == 10


@pytest.fixture(scope="module")
def cold_generators(int8_model: Path) -> dict[str, edgegen.Generator]:
    """One Generator per backend without a prompt cache, loaded once for this module's tests."""
    return {backend: edgegen.load(int8_model, backend=backend, prompt_cache_mb=0) for backend in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_snapshot_restores_the_exact_cache(backend: str, cold_generators: dict[str, edgegen.Generator]) -> None:
    session = cold_generators[backend].session
    ids = np.arange(1000, 1060, dtype=np.int64)
    session.forward(ids[:40])
    snapshot = session.snapshot()
    expected = session.forward(ids[40:48])
    session.reset()
    session.forward(ids[5:30])  # another sequence in between
    session.restore(snapshot)
    assert session.position == 40 and session.common_prefix(ids.tolist()) == 40
    assert np.array_equal(session.forward(ids[40:48]), expected)
    # A prefix of a snapshot: the rest forwarded as when the snapshot was taken (OpenVINO's numbers depend on
    # how a prompt is split into forwards, with or without a restore).
    session.reset()
    session.forward(ids[:20])
    session.forward(ids[20:40])
    snapshot = session.snapshot()
    expected = session.forward(ids[40:48])
    session.restore(snapshot, 20)
    assert session.position == 20 and session.common_prefix(ids.tolist()) == 20
    session.forward(ids[20:40])
    assert np.array_equal(session.forward(ids[40:48]), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_interleaved_conversations_on_the_real_model(backend: str, int8_model: Path,
                                                      cold_generators: dict[str, edgegen.Generator]) -> None:
    gen, cold = edgegen.load(int8_model, backend=backend), cold_generators[backend]
    assert gen.prompt_cache is not None and cold.prompt_cache is None
    _interleave(gen, cold, turns=2, max_new_tokens=16)
    assert len(gen.prompt_cache) == 2  # one per conversation: A's second turn replaced its first (a prefix of it)
