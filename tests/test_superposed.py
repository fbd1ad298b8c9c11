"""Superposed decoding: the algorithm on an in-process model, then the real default model and the CLI.

``EmbeddingLM`` is a tiny recurrent "language model" behind the Session protocol with an embedding
table: ``forward(ids)`` is exactly ``forward_embeddings(embed(ids))``, so a superposition of one
draft with weight 1 must reproduce greedy AR token for token.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from fakes import EmbeddingLM, TinyLM

from edgegen.errors import EdgegenError
from edgegen.runtimes.base import common_prefix_length
from edgegen.sampling import Sampler, SamplingConfig
from edgegen.strategies import make_strategy
from edgegen.strategies.autoregressive import Autoregressive
from edgegen.strategies.base import DecodeRequest
from edgegen.strategies.superposed import DIVERSITY, Superposed, candidates, interpolate, log_softmax, superposition

VOCAB, EOS = EmbeddingLM.VOCAB, EmbeddingLM.EOS
PROMPT = [5, 9, 3]


class BigramStore:
    """An n-gram store over a token corpus: bigram probabilities only (enough for the interface)."""

    def __init__(self, corpus: list[int]) -> None:
        self.counts = np.zeros((VOCAB, VOCAB))
        np.add.at(self.counts, (corpus[:-1], corpus[1:]), 1.0)
        self.calls = 0

    def probabilities(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        self.calls += 1
        assert histories.ndim == 2 and candidates.shape[0] == histories.shape[0]
        rows = self.counts[histories[:, -1]]  # (k, vocab)
        totals = np.maximum(rows.sum(axis=1, keepdims=True), 1.0)
        return (np.take_along_axis(rows, candidates, axis=1) / totals).astype(np.float32)


def run(strategy, model: EmbeddingLM, new: int = 24, eos: bool = True, prompt: list[int] = PROMPT) -> list[int]:
    request = DecodeRequest(model, list(prompt), Sampler(SamplingConfig()), new,
                            eos_token_ids=frozenset({EOS}) if eos else frozenset())
    tokens: list[int] = []
    for step in strategy.decode(request):
        tokens += step
        if EOS in tokens or len(tokens) >= new:
            break
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens[:new]


@pytest.mark.parametrize("seed", range(6))
def test_one_draft_without_ngram_is_greedy(seed: int) -> None:
    model = EmbeddingLM(seed, eos_bias=-1.0 if seed % 2 else -6.0)  # odd seeds end early on EOS
    greedy = run(Autoregressive(), model)
    sup = Superposed(num_drafts=1, alpha=0.0)
    assert run(sup, model) == greedy
    assert len(sup.drafts) == 1 and sup.drafts[0].tokens == greedy


@pytest.mark.parametrize("seed", range(3))
def test_one_draft_feeds_token_ids_on_a_session_without_embeddings(seed: int) -> None:
    """One draft carries all the weight at every step: it feeds ids, on the graph AR runs (a Generator gives it the
    ids session, no input-embedding graph); more drafts need the embeddings."""
    model = TinyLM(seed, sharpness=1.0)  # no embed / forward_embeddings
    sup = Superposed(num_drafts=1, alpha=0.0)
    assert not sup.needs_embeddings and Superposed(num_drafts=2).needs_embeddings
    assert run(sup, model, eos=False) == run(Autoregressive(), TinyLM(seed, sharpness=1.0), eos=False)


def test_k_drafts_are_distinct_ranked_and_cost_one_pass() -> None:
    model = EmbeddingLM(1)
    sup = Superposed(num_drafts=4, alpha=0.0, rescore=False)  # the decoding alone (rescoring: below)
    best = run(sup, model, new=20, eos=False)
    assert len(sup.drafts) == 4 and best == sup.drafts[0].tokens
    assert len({tuple(d.tokens) for d in sup.drafts}) == 4
    assert all(len(d.tokens) == 20 for d in sup.drafts)
    scores = [d.score for d in sup.drafts]
    assert scores == sorted(scores, reverse=True)
    assert model.forwards == 20  # the prefill + 19 superposed steps: one pass for all drafts


def test_eos_drafts_go_to_the_finished_pool() -> None:
    model = EmbeddingLM(3, eos_bias=1.5)  # EOS is likely: drafts end at different lengths
    sup = Superposed(num_drafts=3, alpha=0.0)
    run(sup, model, new=40)
    ended = [d for d in sup.drafts if d.tokens[-1] == EOS]
    assert ended, "expected finished drafts"
    assert all(EOS not in d.tokens[:-1] for d in sup.drafts)  # EOS only ever ends a draft
    # the run stops once the pool holds k drafts: never longer than the max length
    assert max(len(d.tokens) for d in sup.drafts) <= 40


def test_ngram_scores_steer_the_drafts() -> None:
    model = EmbeddingLM(2, sharpness=0.3)  # an unsure LM: the n-gram model decides among candidates
    corpus = list(np.random.default_rng(0).integers(1, VOCAB, size=400))
    store = BigramStore(corpus)
    # the paper's beam bookkeeping: a draft whose candidates the filter all rejects loses its slot ("lanes"
    # keeps every draft, so a lane may have to take an unseen transition)
    plain = Superposed(3, alpha=0.0, diversity="none")
    mixed = Superposed(3, alpha=0.9, ngram=store, diversity="none")
    run(plain, model, new=16, eos=False)
    run(mixed, model, new=16, eos=False)
    assert store.calls == 16  # one batched lookup per step, all drafts at once
    assert [d.tokens for d in plain.drafts] != [d.tokens for d in mixed.drafts]
    seen = store.counts > 0
    follows = [np.mean([seen[a, b] for a, b in zip([PROMPT[-1], *d.tokens], d.tokens, strict=False)])
               for d in mixed.drafts]
    assert min(follows) == 1.0  # every transition exists in the corpus when alpha is high


def test_helpers() -> None:
    logits = np.array([0.0, 3.0, 1.0, 2.0], np.float32)
    top, log_p = candidates(logits, 2, 1.0)
    assert top.tolist() == [1, 3] and np.isclose(np.exp(log_p).sum(), 1.0)
    p_ngram = np.array([[0.5, 0.0], [0.0, 0.0]])
    s = interpolate(log_p, p_ngram, 0.5)
    assert np.isfinite(s[0, 0]) and s[0, 1] == -np.inf  # unseen n-gram: dropped for that draft
    assert np.allclose(s[1], 0.5 * log_p - 200.0)  # a draft with no seen candidate keeps a penalised LM score
    w = superposition(np.array([0.0, -1.0, -50.0]))
    assert np.isclose(w.sum(), 1.0) and w[0] > w[1] > w[2]
    assert superposition(np.zeros(1)).tolist() == [1.0]


@pytest.mark.parametrize(("options", "needle"), [
    ({"num_drafts": 0}, "num_drafts must be >= 1"),
    ({"alpha": 1.5}, "alpha must be in [0, 1]"),
    ({"alpha": -0.1}, "alpha must be in [0, 1]"),
    ({"ngram": "/nonexistent/store.ngram"}, "n-gram store not found"),
])
def test_bad_options_are_one_line(options: dict, needle: str) -> None:
    with pytest.raises(EdgegenError, match=None) as e:
        make_strategy("superposed", **options)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_alpha_zero_needs_no_store_and_sampling_is_refused() -> None:
    assert make_strategy("superposed").alpha == 0.0  # no store given: the LM alone, nothing to build
    assert make_strategy("superposed", ngram=BigramStore([1, 2])).alpha == 0.54  # a store: the paper's weight
    request = DecodeRequest(EmbeddingLM(0), list(PROMPT), Sampler(SamplingConfig()), 4)
    with pytest.raises(EdgegenError, match="needs an n-gram store"):
        next(Superposed(alpha=0.5).decode(request))  # no store and no model folder to find the default
    request.sampler = Sampler(SamplingConfig(temperature=0.7))
    with pytest.raises(EdgegenError, match="deterministic"):
        next(Superposed(alpha=0.0).decode(request))


def test_bench_metrics() -> None:
    from edgegen.bench.superposed import distinct2, perplexity, self_bleu, until_eos

    # values from NLTK 3.10.4: mean sentence_bleu(others, draft, uniform weights up to min(4, shortest),
    # SmoothingFunction().method1), as the paper's diversity_grader.py computes Self-BLEU
    cases = [([[6, 3, 0, 2, 4, 3, 3], [3, 2, 4, 1, 4], [2, 1, 6]], 0.13331997234673412),
             ([[2, 4, 1, 2, 1, 1, 6], [0, 4, 5], [3, 0, 0, 5, 6]], 0.07094341968460577),
             ([[2, 2, 6, 3, 0, 6, 6, 6], [1, 4, 5, 0, 6, 5, 1], [3]], 0.20838605070176322),
             ([[2, 2, 3], [0, 6, 1, 4, 0, 3, 0, 5, 0, 1, 3], [4, 3, 5, 1, 4]], 0.10766913949160616),
             ([[5], [5], [2, 4, 4]], 0.6666666666666666)]
    for drafts, expected in cases:
        assert np.isclose(self_bleu(drafts), expected, rtol=0, atol=1e-12)
    assert self_bleu([[1, 2, 3, 4, 5]] * 3) == 1.0
    assert distinct2([[1, 2, 3], [1, 2, 4]]) == 0.75
    assert until_eos([4, 0, 5], {EOS}) == [4, 0] and until_eos([4, 5], {EOS}) == [4, 5]
    model = EmbeddingLM(0)
    continuation = [7, 8, 9]
    logits = model.forward(np.array(PROMPT + continuation))[len(PROMPT) - 1 : -1].astype(np.float64)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = np.exp(-np.mean(log_p[np.arange(3), continuation]))
    assert np.isclose(perplexity(model, PROMPT, continuation), expected)


# ---- the real default model: the session's fp32 export (it has the input-embedding graphs)

REAL_PROMPTS = [("def fibonacci(n):", False), ("What is the capital of France?", True),
                ("Explain photosynthesis to a ten-year-old in a few sentences.", True)]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, fp32_model) -> str:
    """An n-gram store counted from one stdlib package with the model's tokenizer (seconds to build)."""
    import json as json_module
    from pathlib import Path

    from edgegen.manifest import read_manifest
    from edgegen.ngram_build import build_store
    from edgegen.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(fp32_model, read_manifest(fp32_model))
    out = tmp_path_factory.mktemp("ngram") / "json.npz"
    return str(build_store([Path(json_module.__file__).parent], tokenizer, out=out, progress=False))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_real_model_one_draft_is_greedy(backend: str, fp32_model) -> None:
    import edgegen

    gen = edgegen.load(fp32_model, backend=backend, embeddings=True)  # AR runs on the same graph
    for prompt, chat in REAL_PROMPTS:
        ar = gen.generate(prompt, max_new_tokens=32, chat=chat, strategy="ar")
        sup = gen.generate(prompt, max_new_tokens=32, chat=chat, strategy="superposed", num_drafts=1, alpha=0.0)
        assert sup.token_ids == ar.token_ids, f"superposed k=1 differs from greedy on {backend}: {prompt!r}"
        assert sup.finish_reason == ar.finish_reason and sup.text == ar.text
        assert [d.token_ids for d in sup.drafts] == [ar.token_ids]


@pytest.mark.slow
def test_real_model_three_drafts(fp32_model, tiny_store: str) -> None:
    import edgegen

    gen = edgegen.load(fp32_model, backend="onnxruntime")  # no embeddings asked: superposed opens its session
    paper = {"strategy": "superposed", "alpha": 0.54, "ngram": tiny_store}
    r = gen.generate("Name three rivers.", max_new_tokens=24, num_drafts=3, **paper)
    assert len(r.drafts) == 3 and len({tuple(d.token_ids) for d in r.drafts}) == 3
    assert [d.score for d in r.drafts] == sorted((d.score for d in r.drafts), reverse=True)
    assert (r.text, r.token_ids, r.finish_reason) == (r.drafts[0].text, r.drafts[0].token_ids,
                                                      r.drafts[0].finish_reason)
    assert all(d.text == gen.tokenizer.decode(d.token_ids) for d in r.drafts)
    stream = gen.stream("Name three rivers.", max_new_tokens=24, **paper)
    assert list(stream) == [r.text]  # the best draft, in one piece once all drafts are ranked
    assert stream.result is not None and stream.result.drafts == r.drafts


@pytest.mark.slow
def test_real_model_drafts_are_apart_and_scored_by_the_model(fp32_model) -> None:
    """The default rule on the real model: 3 distinct drafts, each draft's score = the model's mean log-prob of
    its tokens when prompt + draft are re-scored in one forward from an empty cache."""
    import edgegen
    from edgegen import runtimes
    from edgegen.manifest import read_manifest

    gen = edgegen.load(fp32_model, backend="onnxruntime", embeddings=True)
    prompt = gen.tokenizer.encode_prompt("def fibonacci(n):", False)
    r = gen.generate(prompt, max_new_tokens=16, strategy="superposed", num_drafts=3, ignore_eos=True, branch=math.inf)
    assert len({tuple(d.token_ids) for d in r.drafts}) == 3
    assert len({d.token_ids[0] for d in r.drafts}) == 3  # lanes: k distinct first tokens
    fresh = runtimes.open_session(fp32_model, read_manifest(fp32_model), "onnxruntime")
    for d in r.drafts:
        logits = fresh.forward(np.asarray(prompt + d.token_ids, np.int64))[len(prompt) - 1 : -1]
        fresh.reset()
        exact = float(np.mean(log_softmax(logits)[np.arange(len(d.token_ids)), d.token_ids]))
        assert abs(d.score - exact) < 2e-3, (d.score, exact)  # fp32 sums in another order: ~1e-5 apart


@pytest.mark.slow
@pytest.mark.extended  # the CLI over the real fp32 model (~25 s): scripts/test.sh --all; the API's checks stay in CI
def test_cli_superposed(fp32_model) -> None:
    import json as json_module

    from test_cli import assert_one_line_error, edgegen

    args = ["run", "--model", str(fp32_model), "--strategy", "superposed", "--num-drafts", "3", "--alpha", "0",
            "--max-new-tokens", "12", "--raw", "def add(a, b):"]
    proc = edgegen(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json_module.loads(proc.stdout)
    assert len(out["drafts"]) == 3 and out["text"] == out["drafts"][0]["text"]
    assert all(set(d) == {"text", "token_ids", "score", "finish_reason"} for d in out["drafts"])
    proc = edgegen(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("--- draft ") == 3 and out["drafts"][1]["text"] in proc.stdout
    proc = edgegen("run", "--model", str(fp32_model), "--strategy", "superposed", "--diversity", "none",
                   "--max-new-tokens", "6", "--raw", "--json", "def add(a, b):")
    assert proc.returncode == 0, proc.stderr
    assert len(json_module.loads(proc.stdout)["drafts"]) == 3
    bad = ["run", "--model", str(fp32_model), "--strategy", "superposed"]
    assert_one_line_error(edgegen(*bad, "--num-drafts", "0", "hi"), "num_drafts must be >= 1")
    assert_one_line_error(edgegen(*bad, "--alpha", "1.5", "hi"), "alpha must be in [0, 1]")
    assert_one_line_error(edgegen(*bad, "--ngram", "/no/store.npz", "hi"), "n-gram store not found")


# ---- diversity rules and exact scores (issue 18)


def one_pass_score(model: EmbeddingLM, prompt: list[int], draft: list[int]) -> float:
    """Mean log-probability of ``draft`` under ``model``: ONE forward over prompt + draft from an empty cache."""
    model.reset()
    logits = model.forward(np.array(prompt + draft))[len(prompt) - 1 : -1]
    return float(np.mean(log_softmax(logits)[np.arange(len(draft)), draft]))


@pytest.mark.parametrize("diversity", DIVERSITY)
@pytest.mark.parametrize("seed", range(3))
def test_one_draft_is_greedy_for_every_rule(diversity: str, seed: int) -> None:
    model = EmbeddingLM(seed, eos_bias=-1.0 if seed % 2 else -6.0)
    greedy = run(Autoregressive(), model)
    sup = Superposed(num_drafts=1, alpha=0.0, diversity=diversity, diversity_penalty=5.0)
    assert run(sup, model) == greedy and [d.tokens for d in sup.drafts] == [greedy]


@pytest.mark.parametrize("diversity", DIVERSITY)
@pytest.mark.parametrize("seed", range(4))
def test_drafts_are_distinct_valid_continuations_with_exact_scores(diversity: str, seed: int) -> None:
    """Every rule returns k distinct drafts, each re-scored by the model in one forward to its reported score:
    a draft is the model's own continuation of the prompt, and its score is the model's, not the pass's."""
    model = EmbeddingLM(seed, eos_bias=0.5 if seed % 2 else -6.0)  # odd seeds: some drafts end on EOS
    sup = Superposed(num_drafts=3, alpha=0.0, diversity=diversity)
    best = run(sup, model, new=16)
    assert len(sup.drafts) == 3 and len({tuple(d.tokens) for d in sup.drafts}) == 3
    assert best == sup.drafts[0].tokens
    for d in sup.drafts:
        assert EOS not in d.tokens[:-1]
        assert np.isclose(d.score, one_pass_score(model, PROMPT, d.tokens), rtol=0, atol=1e-6)
    assert [d.score for d in sup.drafts] == sorted((d.score for d in sup.drafts), reverse=True)


def test_rescoring_costs_one_forward_per_draft_at_most() -> None:
    model = EmbeddingLM(1)
    sup = Superposed(num_drafts=4, alpha=0.0, continuation="pass")
    run(sup, model, new=20, eos=False)
    assert 20 < model.forwards <= 20 + 4  # drafts sharing a prefix share its forward


def test_lanes_penalty_keeps_drafts_apart_at_every_position() -> None:
    model = EmbeddingLM(4)
    apart = Superposed(num_drafts=3, alpha=0.0, diversity="lanes", diversity_penalty=1e6, branch=math.inf,
                       continuation="pass")
    run(apart, model, new=12, eos=False)
    for i, a in enumerate(apart.drafts):
        for b in apart.drafts[i + 1 :]:
            assert all(x != y for x, y in zip(a.tokens, b.tokens, strict=True))  # never the same token at a step
    # without a penalty the lanes split on their first token only: the shared distribution decides the rest
    split = Superposed(num_drafts=3, alpha=0.0, diversity="lanes", diversity_penalty=0.0, branch=math.inf,
                       continuation="pass")
    run(split, EmbeddingLM(4), new=12, eos=False)
    assert len({d.tokens[0] for d in split.drafts}) == 3 and len({tuple(d.tokens[1:]) for d in split.drafts}) == 1


def test_distance_rule_keeps_a_minimum_hamming_distance() -> None:
    sup = Superposed(num_drafts=3, alpha=0.0, diversity="distance", min_distance=3)
    run(sup, EmbeddingLM(5), new=12, eos=False)
    for i, a in enumerate(sup.drafts):
        for b in sup.drafts[i + 1 :]:
            assert sum(x != y for x, y in zip(a.tokens, b.tokens, strict=True)) >= 3


def test_sample_rule_is_reproducible_per_seed() -> None:
    def drafts(seed: int) -> list[list[int]]:
        sup = Superposed(num_drafts=3, alpha=0.0, diversity="sample", seed=seed, sample_temperature=2.0)
        run(sup, EmbeddingLM(2, sharpness=0.5), new=12, eos=False)
        return sorted(d.tokens for d in sup.drafts)

    assert drafts(0) == drafts(0) and drafts(0) != drafts(1)


def test_adaptive_store_counts_the_prompt_and_the_drafts_exactly() -> None:
    from collections import Counter

    from edgegen.ngram import AdaptiveNgram

    store = AdaptiveNgram()
    prompt = [5, 9, 3, 5, 9, 3, 7]
    sup = Superposed(num_drafts=2, alpha=0.5, ngram=store, adaptive=True, rescore=False)
    run(sup, EmbeddingLM(0), new=8, eos=False, prompt=prompt)
    assert len(sup.drafts) == 2
    # lanes never swap histories: the store holds every window of the prompt, then of each draft's
    # text the windows ending in a generated token
    expected: Counter = Counter()
    for text, first in [(prompt, 0)] + [(prompt + d.tokens, len(prompt)) for d in sup.drafts]:
        for end in range(first, len(text)):
            for m in range(1, 7):
                if end - m + 1 >= 0:
                    expected[tuple(text[end - m + 1 : end + 1])] += 1
    assert store.windows == len(expected)
    for window, count in expected.items():
        if len(window) >= 2:
            gram, ctx = store.counts([list(window[:-1])], [window[-1]], order=len(window))
            assert (int(gram[0, 0]), int(ctx[0])) == (count, expected[window[:-1]])


def test_lanes_keep_k_drafts_when_the_ngram_filter_rejects_candidates() -> None:
    best = int(np.argmax(EmbeddingLM(2).forward(np.array(PROMPT))[-1]))
    store = BigramStore([PROMPT[-1], best] * 3)  # after the prompt only the model's best token was ever seen
    for diversity in ("lanes", "sample"):
        sup = Superposed(num_drafts=3, alpha=0.9, ngram=store, diversity=diversity, rescore=False, branch=math.inf)
        run(sup, EmbeddingLM(2), new=6, eos=False)
        assert len(sup.drafts) == 3 and len({tuple(d.tokens) for d in sup.drafts}) == 3
        assert [d.tokens[0] == best for d in sup.drafts].count(True) == 1  # the seen token, then penalised ones
    assert np.allclose(interpolate(np.log([0.6, 0.4]), np.array([[0.5, 0.0]]), 0.5, drop=False),
                       [[0.5 * np.log(0.6) + 0.5 * np.log(0.5), 0.5 * np.log(0.4) - 200.0]])


@pytest.mark.parametrize(("options", "needle"), [
    ({"diversity": "beam"}, "diversity must be one of"),
    ({"diversity_penalty": -1.0}, "diversity_penalty must be"),
    ({"sample_temperature": 0.0}, "sample_temperature must be"),
    ({"min_distance": 0}, "min_distance must be >= 1"),
    ({"continuation": "mine"}, "continuation must be one of"),
    ({"lookahead": -1}, "lookahead must be >= 0"),
])
def test_bad_diversity_options_are_one_line(options: dict, needle: str) -> None:
    with pytest.raises(EdgegenError) as e:
        make_strategy("superposed", **options)
    assert needle in str(e.value) and "\n" not in str(e.value)


# ---- exact scores from the pass itself; the branch floor (issue 18, second round)


class CountingLM(EmbeddingLM):
    """EmbeddingLM that counts the positions each forward runs (rescoring: how many tokens it re-forwards)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.positions: list[int] = []

    def forward_embeddings(self, embeddings: np.ndarray, last_only: bool = False) -> np.ndarray:
        self.positions.append(len(embeddings))
        return super().forward_embeddings(embeddings, last_only)


def test_one_draft_is_scored_by_the_pass_without_a_forward() -> None:
    """k = 1: every input is the draft's own token, so its exact score needs no forward after the pass."""
    for seed in range(3):
        model = EmbeddingLM(seed, eos_bias=-6.0)
        sup = Superposed(num_drafts=1, alpha=0.0)
        tokens = run(sup, model, new=20, eos=False)
        assert model.forwards == 20  # the prefill + 19 steps, no re-score forward
        assert np.isclose(sup.drafts[0].score, one_pass_score(model, PROMPT, tokens), rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_rescoring_forwards_only_what_the_pass_did_not_score(seed: int) -> None:
    """With only the leading draft heard (min_weight 0.99), the pass scores it and every draft's shared prefix
    exactly: rescoring forwards each other draft once, from its first own token, and the scores stay exact."""
    model = CountingLM(seed)
    sup = Superposed(num_drafts=3, alpha=0.0, min_weight=0.99, branch=2.0, continuation="pass")
    run(sup, model, new=16, eos=False)
    rescored = model.positions[16:]  # after the prefill and the 15 superposed steps
    best = sup.drafts[0].tokens
    others = [d.tokens for d in sup.drafts[1:]]
    shared = [next(j for j, (a, b) in enumerate(zip(d, best, strict=True)) if a != b) for d in others]
    assert len(rescored) <= 2 and sum(rescored) <= sum(16 - s - 1 for s in shared)
    for d in sup.drafts:
        assert np.isclose(d.score, one_pass_score(model, PROMPT, d.tokens), rtol=0, atol=1e-6)


@pytest.mark.parametrize("diversity", ["lanes", "sample"])
@pytest.mark.parametrize("seed", range(4))
def test_branch_floor_keeps_drafts_distinct_valid_and_exact(diversity: str, seed: int) -> None:
    """A finite branch floor: a draft follows the draft it is identical to until it has a token within the
    floor; the drafts still end distinct (they must split at the last step or on EOS) with exact scores."""
    model = EmbeddingLM(seed, eos_bias=0.5 if seed % 2 else -6.0)
    sup = Superposed(num_drafts=3, alpha=0.0, diversity=diversity, branch=0.05)
    run(sup, model, new=12)
    assert len(sup.drafts) == 3 and len({tuple(d.tokens) for d in sup.drafts}) == 3
    for d in sup.drafts:
        assert EOS not in d.tokens[:-1]
        assert np.isclose(d.score, one_pass_score(model, PROMPT, d.tokens), rtol=0, atol=1e-6)


def test_branch_floor_branches_only_within_the_floor() -> None:
    """At the first step a draft takes a token its twin did not take only if it is within ``branch`` nats of
    the best one; with branch = inf (the old rule) the k drafts always start with k distinct tokens."""
    model = EmbeddingLM(2)
    logits = model.forward(np.array(PROMPT))[-1]
    model.reset()
    gaps = np.sort(logits)[::-1]
    floor = float(gaps[0] - gaps[1]) / 2  # the second token is further than this from the best
    sup = Superposed(num_drafts=2, alpha=0.0, branch=floor)
    run(sup, model, new=8, eos=False)
    assert sup.drafts[0].tokens[0] == sup.drafts[1].tokens[0]  # followed its twin at the first step
    split = Superposed(num_drafts=2, alpha=0.0, branch=np.inf)
    run(split, EmbeddingLM(2), new=8, eos=False)
    assert split.drafts[0].tokens[0] != split.drafts[1].tokens[0]


def test_superposition_drops_weights_under_the_floor() -> None:
    w = superposition(np.array([0.0, -1.0, -50.0]), floor=1e-3)
    assert w[2] == 0.0 and np.isclose(w.sum(), 1.0) and w[1] > 0
    assert np.allclose(superposition(np.array([0.0, 0.0, 0.0]), floor=0.9), 1 / 3)  # the best are never dropped


# ---- drafts that go on from their own distribution (issue 18, third round)


def greedy_positions(model: EmbeddingLM, prompt: list[int], draft: list[int]) -> np.ndarray:
    """Whether each token of ``draft`` is the model's argmax after prompt + the draft's tokens before it."""
    model.reset()
    logits = model.forward(np.array(prompt + draft))[len(prompt) - 1 : -1]
    return np.argmax(logits, axis=1) == np.array(draft)


@pytest.mark.parametrize("seed", range(6))
def test_own_continuation_is_greedy_after_the_tokens_that_set_a_draft_apart(seed: int) -> None:
    """continuation="own": once a draft differs from every other draft, each of its tokens is the model's own
    greedy choice (its own distribution, not the leading draft's); the drafts stay distinct, the scores exact,
    and how many tokens each forward verifies (lookahead) changes no token."""
    model = EmbeddingLM(seed, eos_bias=0.5 if seed % 2 else -6.0)
    sup = Superposed(num_drafts=3, alpha=0.0, continuation="own")
    run(sup, model, new=16)
    assert len(sup.drafts) == 3 and len({tuple(d.tokens) for d in sup.drafts}) == 3
    for d in sup.drafts:
        apart = 1 + max(common_prefix_length(d.tokens, o.tokens) for o in sup.drafts if o is not d)
        assert greedy_positions(model, PROMPT, d.tokens)[apart:].all()
        assert EOS not in d.tokens[:-1]
        assert np.isclose(d.score, one_pass_score(model, PROMPT, d.tokens), rtol=0, atol=1e-6)
    for lookahead in (0, 1, 7):
        other = Superposed(num_drafts=3, alpha=0.0, continuation="own", lookahead=lookahead)
        run(other, EmbeddingLM(seed, eos_bias=0.5 if seed % 2 else -6.0), new=16)
        assert [d.tokens for d in other.drafts] == [d.tokens for d in sup.drafts]


@pytest.mark.parametrize("seed", range(3))
def test_own_continuation_costs_at_most_one_forward_per_decided_token(seed: int) -> None:
    """Each forward after the pass decides at least one new token of a draft (its verified proposal rows
    included): the other drafts cost at most one forward per token they decide, one row per token without a
    lookahead, and verified proposals only save forwards."""
    counts = {}
    for lookahead in (0, 4):
        model = CountingLM(seed, eos_bias=-6.0)
        sup = Superposed(num_drafts=3, alpha=0.0, continuation="own", lookahead=lookahead)
        run(sup, model, new=16, eos=False)
        after = model.positions[16:]  # the prefill and 15 superposed steps come first
        apart = [1 + max(common_prefix_length(d.tokens, o.tokens) for o in sup.drafts if o is not d)
                 for d in sup.drafts]
        decided = sum(16 - a for a in apart)  # tokens chosen after a draft differs from all others (at least)
        assert 0 < len(after) <= decided + 3  # + one forward of only kept tokens per draft, at most
        assert sum(after) <= 16 * 3 - 16 + (lookahead + 1) * len(after)  # the leading draft's rows are the pass's
        counts[lookahead] = len(after)
    assert counts[4] <= counts[0]
