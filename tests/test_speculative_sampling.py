"""Speculative sampling is lossless: exact distributions on a tiny in-process model.

Target and drafter are small NumPy "language models" whose logits depend on the whole prefix, run
behind the real Session protocol (forward/trim/reset), so the real speculative loop, verification,
KV rollback and drafter bookkeeping are exercised. The joint distribution of the first tokens is
compared with the exact AR distribution by a chi-square test; the same test is shown to catch an
off-by-one in the rejection step.
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from fakes import TinyLM

from edgegen.sampling import Sampler, SamplingConfig, distribution
from edgegen.strategies import verify as verify_module
from edgegen.strategies.autoregressive import Autoregressive
from edgegen.strategies.base import DecodeRequest
from edgegen.strategies.draft_length import DraftLength
from edgegen.strategies.drafters import Draft, LookupThenModel, ModelDrafter, PromptLookupDrafter
from edgegen.strategies.speculative import Speculative

VOCAB = 5
PROMPT = [1, 3]
NEW = 3


def exact_ar_distribution(config: SamplingConfig) -> dict[tuple[int, ...], float]:
    target = TinyLM(seed=1, sharpness=1.5)
    probs = {}
    for seq in itertools.product(range(VOCAB), repeat=NEW):
        p, context = 1.0, list(PROMPT)
        for t in seq:
            p *= distribution(target.logits_after(context), context, config)[t]
            context.append(t)
        probs[seq] = p
    return probs


def sample_first_tokens(strategy_factory, config: SamplingConfig, runs: int) -> Counter:
    counts: Counter = Counter()
    for seed in range(runs):
        sampler = Sampler(SamplingConfig(**{**config.__dict__, "seed": seed}))
        request = DecodeRequest(TinyLM(seed=1, sharpness=1.5), list(PROMPT), sampler, NEW)
        tokens: list[int] = []
        for new in strategy_factory().decode(request):
            tokens += new
            if len(tokens) >= NEW:
                break
        counts[tuple(tokens[:NEW])] += 1
    return counts


def chi_square_pvalue(counts: Counter, expected: dict[tuple[int, ...], float], runs: int) -> float:
    from scipy.stats import chisquare

    impossible = [k for k, p in expected.items() if p == 0.0]
    if any(counts.get(k, 0) for k in impossible):  # a zero-probability sequence was produced
        return 0.0
    keys = sorted(k for k, p in expected.items() if p > 0.0)
    observed = np.array([counts.get(k, 0) for k in keys], float)
    exp = np.array([expected[k] for k in keys]) * runs
    # pool outcomes too rare for the chi-square approximation
    rare = exp < 5
    if rare.any():
        observed = np.append(observed[~rare], observed[rare].sum())
        exp = np.append(exp[~rare], exp[rare].sum())
    return float(chisquare(observed, exp).pvalue)


CONFIGS = [SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.7, top_k=3),
           SamplingConfig(temperature=1.2, top_p=0.8, repetition_penalty=1.3)]
RUNS = 6000


def model_drafter_strategy() -> Speculative:
    # a fixed length: the adaptive one follows measured times, and this check must exercise every draft slot
    return Speculative(ModelDrafter(TinyLM(seed=2, sharpness=1.0)), num_draft_tokens=2, adaptive=False)


@pytest.mark.parametrize("config", CONFIGS, ids=["plain", "top-k", "top-p+penalty"])
def test_speculative_sampling_matches_ar_exactly(config: SamplingConfig) -> None:
    expected = exact_ar_distribution(config)
    assert chi_square_pvalue(sample_first_tokens(Autoregressive, config, RUNS), expected, RUNS) > 1e-3
    assert chi_square_pvalue(sample_first_tokens(model_drafter_strategy, config, RUNS), expected, RUNS) > 1e-3


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[2]], ids=["plain", "top-p+penalty"])
def test_reduced_head_drafter_is_lossless(config: SamplingConfig) -> None:
    # A drafter whose head holds 3 of the 5 tokens (its token i is the target's [4, 0, 2][i]): it can
    # never propose tokens 1 and 3, and feeds them in as its token 0; the output must still be AR's.
    def reduced() -> Speculative:
        drafter = ModelDrafter(TinyLM(seed=2, sharpness=1.0, vocab=3), head_vocab=np.array([4, 0, 2]),
                               target_vocab=VOCAB)
        return Speculative(drafter, num_draft_tokens=2, adaptive=False)

    counts = sample_first_tokens(reduced, config, RUNS)
    assert chi_square_pvalue(counts, exact_ar_distribution(config), RUNS) > 1e-3
    request = DecodeRequest(TinyLM(seed=1, sharpness=1.5), list(PROMPT), Sampler(SamplingConfig(seed=0)), 12)
    produced = 0
    for new in reduced().decode(request):  # the loop's consumer decides when to stop
        produced += len(new)
        if produced >= 12:
            break
    assert request.counters.draft_accepted > 0  # its drafts, renumbered, were really used


def test_prompt_lookup_sampling_matches_ar_exactly() -> None:
    config = CONFIGS[0]

    def lookup() -> Speculative:
        return Speculative(PromptLookupDrafter(max_ngram=2), num_draft_tokens=3, adaptive=False)

    def lookup_then_model() -> Speculative:  # deterministic lookup drafts mixed with sampled model drafts
        drafter = LookupThenModel(ModelDrafter(TinyLM(seed=2, sharpness=1.0)), PromptLookupDrafter(max_ngram=2))
        return Speculative(drafter, num_draft_tokens=2, adaptive=False)

    # the prompt repeats so lookup proposes drafts that are sometimes right
    global PROMPT
    saved, PROMPT = PROMPT, [1, 3, 1, 3, 1]
    try:
        expected = exact_ar_distribution(config)
        assert chi_square_pvalue(sample_first_tokens(lookup, config, RUNS), expected, RUNS) > 1e-3
        assert chi_square_pvalue(sample_first_tokens(lookup_then_model, config, RUNS), expected, RUNS) > 1e-3
    finally:
        PROMPT = saved


def test_the_check_catches_an_off_by_one_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    # A rejection handler that compares against the next row's distribution (one position late, as in
    # openvino.genai issue 4190) must be detected by the same statistical check.
    real = verify_module.verify

    def late(target_logits, draft, q, history, sampler):
        shifted = np.concatenate([target_logits[1:], target_logits[-1:]])
        return real(shifted, draft, q, history, sampler)

    monkeypatch.setattr("edgegen.strategies.speculative.verify", late)
    config = CONFIGS[0]
    counts = sample_first_tokens(model_drafter_strategy, config, RUNS)
    assert chi_square_pvalue(counts, exact_ar_distribution(config), RUNS) < 1e-6


def test_greedy_speculative_equals_ar_on_tiny_model() -> None:
    for drafter_seed in range(5):
        outputs = []
        for factory in (Autoregressive,
                        lambda s=drafter_seed: Speculative(ModelDrafter(TinyLM(seed=s + 10, sharpness=1.0)), 3)):
            request = DecodeRequest(TinyLM(seed=1, sharpness=1.5), list(PROMPT), Sampler(SamplingConfig()), 20)
            tokens: list[int] = []
            for new in factory().decode(request):
                tokens += new
                if len(tokens) >= 20:
                    break
            outputs.append(tokens[:20])
        assert outputs[0] == outputs[1]


def test_draft_length_follows_acceptance_and_measured_costs() -> None:
    # target forward: 10 ms + 1 ms per row; free drafter
    length = DraftLength(initial=4, maximum=8)

    def run(steps: int, acceptance: float) -> int:
        n = 0
        for _ in range(steps):
            n = length.choose(room=100)
            accepted = int(round(acceptance * n))
            length.update(n, accepted, n + 1, 0.010 + 0.001 * (n + 1), 0.0)
        return length.choose(room=100)

    assert run(30, 1.0) == 8  # everything accepted: draft the maximum
    assert length.choose(room=3) == 3  # never past the room left
    assert run(60, 0.0) == 0  # nothing accepted: plain steps, no wasted verification rows
    # plain steps forget the misses: drafting is tried again
    # rare probes while nothing is accepted (each costs one extra row, ~9% of a step here)
    assert sum(run(1, 0.0) > 0 for _ in range(100)) <= 10
    assert any(length.choose(room=100) > 0 for _ in range(300) if length.update(0, 0, 1, 0.011, 0.0) is None)
    # an expensive drafter (20 ms a token) is not worth it at 50% acceptance
    costly = DraftLength(initial=4, maximum=8)
    for _ in range(30):
        n = costly.choose(room=100)
        costly.update(n, n // 2, n + 1, 0.010 + 0.001 * (n + 1), 0.020 * n)
    assert costly.choose(room=100) == 0


def test_draft_length_keeps_acceptance_per_kind() -> None:
    # one-token matches always rejected, three-token matches always accepted: only the latter are drafted
    length = DraftLength(initial=4, maximum=8)
    for _ in range(40):
        for kind, rate in ((1, 0.0), (3, 1.0)):
            n = length.choose(room=8, kind=kind)
            length.update(n, int(rate * n), n + 1, 0.010 + 0.003 * (n + 1), 0.0, kind)
    assert length.choose(room=8, kind=1) == 0
    assert length.choose(room=8, kind=3) == 8
    assert length.acceptance(1) < 0.2 < 0.8 < length.acceptance(3)


def test_prompt_lookup_drafts_carry_the_matched_ngram_length() -> None:
    drafter = PromptLookupDrafter(max_ngram=3)
    context = [5, 6, 7, 8, 9, 1, 6, 7]  # [6, 7] occurred before, [1, 6, 7] did not
    draft = drafter.propose(context, 4, None)
    assert (draft.tokens, draft.kind) == ([8, 9, 1, 6], 2)
    assert draft.prefix(1).kind == 2
    assert drafter.propose([*context, 8], 2, None).kind == 3  # [6, 7, 8] now repeats
    assert drafter.propose([1, 2, 3], 2, None) == Draft([])
