"""The `lexical` strategy (Lexical Unit Decoding) on a tiny in-process Session with placeholder rows.

TinyLexLM's real rows are a fixed random function of the real prefix; the row of placeholder P_j predicts the
AR-greedy token j+1 steps ahead, with a confidence and (by a hash of the prefix) sometimes a confident wrong
token, so adaptive acceptance, rejections in verified mode and the cache rollback are all exercised.
"""

from __future__ import annotations

import numpy as np
import pytest
from fakes import TinyLexLM

from edgegen.errors import EdgegenError
from edgegen.sampling import Sampler, SamplingConfig
from edgegen.strategies import make_strategy
from edgegen.strategies.autoregressive import Autoregressive
from edgegen.strategies.base import DecodeRequest
from edgegen.strategies.lexical import Lexical, repeats

PIDS = list(TinyLexLM.PIDS)
VOCAB = TinyLexLM.VOCAB
PROMPTS = [[1, 3], [2], [4, 4, 0, 5], [0, 1, 2, 3]]


def _run(strategy, target: TinyLexLM, prompt: list[int], n: int = 24, config: SamplingConfig | None = None):
    request = DecodeRequest(target, list(prompt), Sampler(config or SamplingConfig()), n)
    out: list[int] = []
    steps = strategy.decode(request)
    for new in steps:
        assert not set(new) & set(PIDS), "a placeholder id was emitted"
        out.extend(new)
        if len(out) >= n:
            break
    steps.close()
    return out[:n], request.counters


def test_threshold_one_is_ar_greedy() -> None:
    for prompt in PROMPTS:
        ar, _ = _run(Autoregressive(), TinyLexLM(wrong=0.3), prompt)
        lud, c = _run(Lexical(threshold=1.0), TinyLexLM(wrong=0.3), prompt)
        assert lud == ar
        assert c.target_steps == len(ar) - 1 and c.draft_proposed == 0  # one token a step, no placeholders


def test_perfect_lookahead_matches_ar_in_fewer_steps() -> None:
    steps = tokens = 0
    for prompt in PROMPTS:
        ar, _ = _run(Autoregressive(), TinyLexLM(), prompt)
        lud, c = _run(Lexical(threshold=0.5, repetition_control=False, adaptive=False), TinyLexLM(), prompt)
        assert lud == ar
        steps, tokens = steps + c.target_steps, tokens + len(lud) - 1
    assert tokens / steps > 1.3


@pytest.mark.parametrize("span,threshold", [(1, 0.0), (2, 0.5), (3, 0.3), (3, 0.8)])
def test_verified_mode_is_ar_greedy(span: int, threshold: float) -> None:
    proposed = accepted = 0
    for prompt in PROMPTS:
        ar, _ = _run(Autoregressive(), TinyLexLM(wrong=0.4), prompt)
        lud, c = _run(Lexical(threshold=threshold, span=span, verified=True, adaptive=False), TinyLexLM(wrong=0.4),
                      prompt)
        assert lud == ar
        proposed, accepted = proposed + c.draft_proposed, accepted + c.draft_accepted
    assert 0 < accepted < proposed  # units were accepted and rejected: rollback ran


def test_unverified_trusts_confident_wrong_guesses() -> None:
    ar, _ = _run(Autoregressive(), TinyLexLM(wrong=1.0), PROMPTS[0])
    lud, c = _run(Lexical(threshold=0.0, repetition_control=False, adaptive=False), TinyLexLM(wrong=1.0), PROMPTS[0])
    assert c.draft_accepted > 0 and lud != ar


def test_adaptive_stops_appending_useless_placeholders() -> None:
    for verified in (False, True):
        # each row costs 4 ms: placeholder rows cost more than they give even on a busy machine
        fixed, cf = _run(Lexical(threshold=0.999, adaptive=False, verified=verified), TinyLexLM(row_s=4e-3),
                         PROMPTS[0], n=60)
        adaptive, ca = _run(Lexical(threshold=0.999, verified=verified), TinyLexLM(row_s=4e-3), PROMPTS[0], n=60)
        assert fixed == adaptive  # nothing passes 0.999: AR tokens either way
        if not verified:
            assert cf.draft_proposed == 3 * cf.target_steps and ca.draft_proposed < cf.draft_proposed / 3


def test_adaptive_keeps_good_placeholders_and_stays_exact() -> None:
    for prompt in PROMPTS:
        ar, _ = _run(Autoregressive(), TinyLexLM(wrong=0.3), prompt)
        lud, _ = _run(Lexical(threshold=0.5, verified=True), TinyLexLM(wrong=0.3), prompt)
        assert lud == ar


def test_repetition_control_ends_a_unit() -> None:
    strategy = Lexical(threshold=0.0)
    sampler = Sampler(SamplingConfig())

    def rows(*tokens: int) -> np.ndarray:
        out = np.full((len(tokens), VOCAB), -30.0, np.float32)
        out[np.arange(len(tokens)), tokens] = 5.0
        return out

    assert strategy.unit(rows(2, 2), [1, 3], sampler, 0.0, 5) == [2]  # 2, 2: the second ends it
    assert strategy.unit(rows(2), [1, 2], sampler, 0.0, 5) == []  # repeats the last token
    assert strategy.unit(rows(5, 6, 5), [4, 5, 6], sampler, 0.0, 5) == [5]  # then 6 would say "5 6" twice
    assert strategy.unit(rows(4, 5, 4, 5), [1, 2, 3], sampler, 0.0, 5) == [4, 5, 4]  # not 3 4 5 4 5: 4 5 4 5
    assert strategy.unit(rows(5, 6, 7, 8), [1, 2, 3], sampler, 0.0, 5) == [5, 6, 7, 8]  # no repeat: all kept
    assert Lexical(threshold=0.0, repetition_control=False).unit(rows(2, 2), [1, 2], sampler, 0.0, 5) == [2, 2]
    assert repeats([9, *range(8)] + list(range(8))) and not repeats(list(range(9)) * 2)  # blocks of 1..8 only


def test_verified_sampling_is_seeded() -> None:
    # adaptive=False: adaptive placeholder counts follow measured timings, which changes how random numbers
    # are consumed (the output distribution stays AR's, the exact sample does not repeat)
    config = SamplingConfig(temperature=0.8, seed=3)
    a, _ = _run(Lexical(threshold=0.3, verified=True, adaptive=False), TinyLexLM(wrong=0.3), PROMPTS[0], config=config)
    b, _ = _run(Lexical(threshold=0.3, verified=True, adaptive=False), TinyLexLM(wrong=0.3), PROMPTS[0], config=config)
    assert a == b


def test_bad_options_are_clear() -> None:
    with pytest.raises(ValueError, match="threshold"):
        Lexical(threshold=1.5)
    with pytest.raises(ValueError, match="span"):
        Lexical(span=0)
    with pytest.raises(EdgegenError, match="exceeds the 3 placeholders"):
        _run(Lexical(span=4), TinyLexLM(), PROMPTS[0])
    with pytest.raises(EdgegenError, match="not LUD-tuned"):
        _run(Lexical(), TinyLexLM(lud={}), PROMPTS[0])


def test_registered() -> None:
    from edgegen.strategies import STRATEGIES

    assert "lexical" in STRATEGIES
    with pytest.raises(EdgegenError, match="bad options for strategy 'lexical'.*threshold"):
        make_strategy("lexical", threshold=-0.1)
    assert make_strategy("lexical", threshold=0.5, span=2, verified=True).name == "lexical"
