"""Logit processing and sampling against brute-force definitions and transformers' processors."""

import numpy as np
import pytest

from edgegen.errors import EdgegenError
from edgegen.sampling import Sampler, SamplingConfig, apply_repetition_penalty, distribution, sample


def _brute_top_p(probs: np.ndarray, top_p: float) -> np.ndarray:
    order = np.argsort(-probs, kind="stable")
    kept, mass = [], 0.0
    for i in order:
        kept.append(i)
        mass += probs[i]
        if mass >= top_p:
            break
    out = np.zeros_like(probs)
    out[kept] = probs[kept]
    return out / out.sum()


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("vocab", [50, 5000])
def test_top_p_matches_definition(top_p: float, vocab: int) -> None:
    rng = np.random.default_rng(vocab)
    logits = rng.normal(size=vocab).astype(np.float32) * 3
    got = distribution(logits, [], SamplingConfig(temperature=0.7, top_p=top_p))
    scaled = logits.astype(np.float64) / 0.7
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    np.testing.assert_allclose(got, _brute_top_p(probs, top_p), atol=1e-12)


def test_top_k_keeps_exactly_k() -> None:
    logits = np.linspace(-3, 3, 100).astype(np.float32)
    probs = distribution(logits, [], SamplingConfig(temperature=1.0, top_k=5))
    assert np.count_nonzero(probs) == 5
    assert set(np.nonzero(probs)[0]) == set(range(95, 100))
    assert probs.sum() == pytest.approx(1.0)


def test_repetition_penalty_matches_transformers() -> None:
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    rng = np.random.default_rng(0)
    logits = rng.normal(size=300).astype(np.float32)
    history = [3, 7, 7, 250, 10]
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([history]), torch.tensor(logits[None]))[0]
    np.testing.assert_allclose(apply_repetition_penalty(logits, history, 1.3), expected.numpy(), rtol=1e-6)


def test_greedy_is_argmax_after_penalty() -> None:
    logits = np.array([0.0, 5.0, 4.9, -1.0], np.float32)
    assert Sampler(SamplingConfig()).pick(logits, []) == 1
    assert Sampler(SamplingConfig(repetition_penalty=2.0)).pick(logits, [1]) == 2
    assert distribution(logits, [], SamplingConfig())[1] == 1.0


def test_sampling_is_seeded_and_follows_the_distribution() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.2], np.float32))
    draws = [Sampler(SamplingConfig(temperature=1.0, seed=s)).pick(logits, []) for s in range(3)]
    assert draws == [Sampler(SamplingConfig(temperature=1.0, seed=s)).pick(logits, []) for s in range(3)]
    rng = np.random.default_rng(1)
    counts = np.bincount([sample(np.array([0.5, 0.3, 0.2]), rng) for _ in range(20000)], minlength=3)
    np.testing.assert_allclose(counts / 20000, [0.5, 0.3, 0.2], atol=0.015)


@pytest.mark.parametrize("kwargs", [{"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1},
                                    {"repetition_penalty": 0.0}, {"temperature": float("nan")}])
def test_bad_settings_are_clear_errors(kwargs: dict) -> None:
    with pytest.raises(EdgegenError):
        SamplingConfig(**kwargs)
