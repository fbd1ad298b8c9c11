"""Greedy drafting on a session whose rows after a call's first carry noise (Session.row_noise, the NPU's static
graph): verification leaves a token such a row decided within its noise to the next call's first row, so the
output is AR's, whose every token is a call's first row."""

from __future__ import annotations

import pytest
from fakes import NoisyRowsLM, TinyLM

from edgegen.sampling import Sampler, SamplingConfig
from edgegen.strategies.autoregressive import Autoregressive
from edgegen.strategies.base import DecodeRequest, Strategy
from edgegen.strategies.drafters import ModelDrafter, PromptLookupDrafter
from edgegen.strategies.speculative import Speculative

PROMPT, NEW, NOISE = [1, 2, 3, 1, 2, 4, 0, 1], 40, 0.05


def greedy(strategy: Strategy, target: NoisyRowsLM) -> tuple[list[int], DecodeRequest]:
    request = DecodeRequest(target, list(PROMPT), Sampler(SamplingConfig()), NEW)
    tokens: list[int] = []
    for new in strategy.decode(request):
        tokens += new
        if len(tokens) >= NEW:
            return tokens[:NEW], request
    raise AssertionError("the strategy stopped early")


DRAFTERS = {
    "prompt-lookup": lambda: Speculative(PromptLookupDrafter(max_ngram=2), num_draft_tokens=4, adaptive=False),
    "speculative": lambda: Speculative(ModelDrafter(TinyLM(seed=9, sharpness=0.3)), num_draft_tokens=3,
                                       adaptive=False),
}


@pytest.mark.parametrize("name", DRAFTERS)
def test_greedy_drafting_equals_ar_on_noisy_rows(name: str) -> None:
    turned = 0
    for seed in range(12):
        want, _ = greedy(Autoregressive(), NoisyRowsLM(seed, 0.3, NOISE))  # one token a call: first rows only
        got, request = greedy(DRAFTERS[name](), NoisyRowsLM(seed, 0.3, NOISE))
        assert got == want, (name, seed)
        assert request.counters.draft_accepted > 0  # drafts still pay: only near-ties are left to the next call
        # the same noise undeclared: the later rows' near-ties turn, and the output leaves AR (the fake bites)
        undeclared, _ = greedy(DRAFTERS[name](), NoisyRowsLM(seed, 0.3, NOISE, declared=False))
        turned += undeclared != want
    assert turned >= 3
