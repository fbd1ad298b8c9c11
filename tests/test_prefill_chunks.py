"""Prefill in chunks: a long prompt is forwarded PREFILL_CHUNK tokens at a time, to the same tokens."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import TinyLM

import edgegen.strategies.base as base
from edgegen.sampling import Sampler, SamplingConfig
from edgegen.strategies.autoregressive import Autoregressive
from edgegen.strategies.base import DecodeRequest

PROMPT = [1, 3, 0, 2, 4, 4, 1, 0, 3, 2, 1, 1, 0]  # 13 tokens


class _Counting(TinyLM):
    """TinyLM recording the length of every forward."""

    def __init__(self) -> None:
        super().__init__(seed=3, sharpness=1.5)
        self.calls: list[int] = []

    def forward(self, token_ids: np.ndarray, last_only: bool = False, hidden: bool = False) -> np.ndarray:
        self.calls.append(len(token_ids))
        return super().forward(token_ids, last_only, hidden)


def _greedy(target: TinyLM, n: int = 8) -> list[int]:
    tokens: list[int] = []
    for new in Autoregressive().decode(DecodeRequest(target, list(PROMPT), Sampler(SamplingConfig()), n)):
        tokens += new
        if len(tokens) >= n:
            break
    return tokens[:n]


@pytest.mark.parametrize("chunk, calls", [(4, [4, 4, 4, 1]), (13, [13]), (6, [6, 6, 1]), (100, [13])])
def test_long_prompts_are_prefilled_in_chunks_to_the_same_tokens(chunk: int, calls: list[int],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _greedy(TinyLM(seed=3, sharpness=1.5))
    monkeypatch.setattr(base, "PREFILL_CHUNK", chunk)
    target = _Counting()
    assert _greedy(target) == whole
    assert target.calls[:len(calls)] == calls and set(target.calls[len(calls):]) == {1}


def test_a_session_that_needs_the_whole_prompt_gets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "PREFILL_CHUNK", 4)
    target = _Counting()
    target.prefill_chunk = 1 << 62  # e.g. the NPU's static prefill graph
    _greedy(target)
    assert target.calls[0] == len(PROMPT)
