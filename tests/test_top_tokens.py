"""Session.forward_top: greedy AR and greedy verification ask the session for each row's best token instead of
full logits rows (on CUDA the torch session picks on the device), and pick exactly what they picked from rows."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from fakes import BrokenLM, TinyLM

from edgegen.errors import EdgegenError
from edgegen.runtimes.base import TopTokens, top_tokens
from edgegen.sampling import Sampler, SamplingConfig
from edgegen.strategies.autoregressive import Autoregressive
from edgegen.strategies.base import DecodeRequest
from edgegen.strategies.speculative import PromptLookup

PROMPT = [1, 2, 3, 1, 2, 3, 1, 2]
NEW = 40


class TiedLM(TinyLM):
    """Integer logits over 6 tokens: most rows have equal maxima, where the lowest id must win."""

    def logits_after(self, prefix: Any) -> np.ndarray:
        return np.round(super().logits_after(prefix)).astype(np.float32)


class DeviceLM(TiedLM):
    """A session that picks on its "device" (Session.forward_top) and counts the logits values it returns."""

    def __init__(self) -> None:
        super().__init__(seed=3, sharpness=1.0, vocab=6)
        self.forward_values = 0  # floats returned by forward (full rows)
        self.top_calls = 0

    def forward(self, token_ids: np.ndarray, last_only: bool = False, hidden: bool = False) -> np.ndarray:
        logits = super().forward(token_ids, last_only, hidden)
        self.forward_values += logits.size
        return logits

    def forward_top(self, token_ids: np.ndarray, k: int = 1, last_only: bool = False,
                    hidden: bool = False) -> TopTokens:
        self.top_calls += 1
        return top_tokens(super().forward(token_ids, last_only, hidden), k)


def _greedy_reference(lm: TinyLM, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(np.argmax(lm.logits_after(seq))))
    return seq[len(prompt):]


def _decode(strategy: Any, lm: Any, config: SamplingConfig | None = None) -> list[int]:
    request = DecodeRequest(lm, list(PROMPT), Sampler(config or SamplingConfig()), NEW)
    return list(itertools.islice(itertools.chain.from_iterable(strategy.decode(request)), NEW))


@pytest.mark.parametrize("strategy", [Autoregressive(), PromptLookup(num_draft_tokens=3)], ids=["ar", "lookup"])
def test_greedy_steps_return_no_logits_rows_and_pick_numpys_argmax(strategy: Any) -> None:
    lm = DeviceLM()
    tokens = _decode(strategy, lm)
    want = _greedy_reference(lm, PROMPT, NEW)
    assert tokens == want  # ties included: the lowest id, as np.argmax
    ties = sum(np.sum(lm.logits_after(PROMPT + want[:i]) == lm.logits_after(PROMPT + want[:i]).max()) > 1
               for i in range(NEW))
    assert ties >= 5  # the fake really ties
    assert lm.forward_values == lm.vocab  # the prefill's last row only: every step after it asked forward_top
    assert lm.top_calls > 0
    assert _decode(strategy, TiedLM(seed=3, sharpness=1.0, vocab=6)) == want  # the host path: the same tokens


def test_penalty_or_sampling_still_read_full_rows() -> None:
    for config in (SamplingConfig(repetition_penalty=1.3), SamplingConfig(temperature=0.8, seed=0)):
        lm = DeviceLM()
        assert len(_decode(Autoregressive(), lm, config)) == NEW
        assert lm.top_calls == 0 and lm.forward_values == NEW * lm.vocab


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_greedy_steps_still_stop_on_non_finite_logits(value: float) -> None:
    for strategy in (Autoregressive(), PromptLookup()):
        with pytest.raises(EdgegenError, match="NaN or infinite"):
            _decode(strategy, BrokenLM(value, broken_at=len(PROMPT) + 3))


def test_top_tokens_on_the_host() -> None:
    big = np.float32(3e38)
    logits = np.array([[1, 5, 5, 0], [2, 2, 2, 2], [np.nan, 1, 9, 0], [big, big, 0, -np.inf], [big, big, 1, 0]],
                      np.float32)
    top = top_tokens(logits)
    assert top.argmax[:2] == [1, 0] and top.argmax == np.argmax(logits, axis=-1).tolist()
    assert top.finite.tolist() == [True, True, False, False, True]  # the last row's sum overflows: still finite
    three = top_tokens(np.array([[1, 5, 5, 0], [2, 2, 1, 2]], np.float32), 3)
    assert three.ids.tolist() == [[1, 2, 0], [0, 1, 3]] and three.logits.tolist() == [[5, 5, 1], [2, 2, 2]]
    with pytest.raises(ValueError):
        top_tokens(logits, 5)
