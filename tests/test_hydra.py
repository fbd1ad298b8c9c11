"""Hydra decoding: heads on the target's hidden state, verified losslessly (greedy = AR, sampling = AR's law).

Tiny fakes (tests/fakes.py: a ListSession's hidden state holds its prefix, TinyHeads read it) run the real
loop; the chi-square check of test_speculative_sampling is applied to the heads' drafts, with and without
prompt lookup, and shown to catch an off-by-one rejection. On the real int8 model: the hidden states are the
LM head's input on both backends, greedy hydra equals AR (heads of the real shape), and an export without the
hidden-state output still loads and hydra refuses it in one line.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import test_speculative_sampling as sampling_test
from fakes import TinyHeads, TinyLM
from test_speculative_sampling import CONFIGS, RUNS, chi_square_pvalue, exact_ar_distribution, sample_first_tokens

from edgegen.errors import EdgegenError
from edgegen.manifest import read_manifest
from edgegen.runtimes import open_session
from edgegen.sampling import Sampler, SamplingConfig
from edgegen.strategies import make_strategy
from edgegen.strategies import verify as verify_module
from edgegen.strategies.autoregressive import Autoregressive
from edgegen.strategies.base import DecodeRequest
from edgegen.strategies.drafters import Draft
from edgegen.strategies.hydra import Hydra, LookupOrHydra, open_heads


def hydra(seed: int = 2, lookup: bool = False, **options) -> Hydra:
    # fixed length, every head drafting: every head's slot is exercised (the adaptive length follows measured times)
    options = {"confidence": 0.0, **options}
    return Hydra(TinyHeads(seed), lookup=lookup, num_draft_tokens=3, adaptive=False, **options)


def run(strategy, prompt: list[int], n: int) -> tuple[list[int], DecodeRequest]:
    """The first ``n`` greedy tokens of ``strategy`` on the fake target, and its request (counters)."""
    request = DecodeRequest(TinyLM(seed=1, sharpness=1.5), list(prompt), Sampler(SamplingConfig()), n)
    tokens: list[int] = []
    for new in strategy.decode(request):
        tokens += new
        if len(tokens) >= n:
            break
    return tokens[:n], request


@pytest.mark.parametrize("heads_seed", [2, 3, 4])
@pytest.mark.parametrize("lookup", [False, True])
def test_greedy_hydra_equals_ar(heads_seed: int, lookup: bool) -> None:
    prompt = [1, 3, 1, 3, 1]  # repeats: prompt lookup drafts too
    ar, _ = run(Autoregressive(), prompt, 24)
    tokens, request = run(hydra(heads_seed, lookup), prompt, 24)
    assert tokens == ar
    c = request.counters
    assert 0 < c.draft_accepted < c.draft_proposed  # drafts were accepted and rejected: rollback ran
    assert c.extra["head1_proposed"] >= c.extra["head2_proposed"] > 0  # per-head counts: a chain's prefix
    assert c.extra["head1_accepted"] >= c.extra["head2_accepted"]


def test_heads_are_not_run_when_lookup_already_drafts_as_long() -> None:
    class Lookup:  # drafts `n` tokens whatever the context
        n = 0

        def propose(self, context, max_tokens, sampler):
            return Draft([7] * min(self.n, max_tokens))

    class Heads:  # a drafter over 3 heads that drafts one token, counting its runs
        heads = TinyHeads(1)
        runs = 0

        def propose(self, context, max_tokens, sampler):
            self.runs += 1
            return Draft([5])

        def discard(self):
            pass

    lookup, heads = Lookup(), Heads()
    both = LookupOrHydra(heads, lookup)
    greedy = Sampler(SamplingConfig())
    for n, room, runs, chosen in [(3, 5, 0, 7), (2, 2, 0, 7), (2, 5, 1, 7), (0, 5, 2, 5), (1, 5, 3, 5)]:
        lookup.n = n
        draft = both.propose([1, 2], room, greedy)
        assert heads.runs == runs and draft.tokens[0] == chosen, (n, room)  # on a tie (1 vs 1): the heads


def test_heads_agreeing_with_the_target_are_accepted() -> None:
    # heads that score with the target's own model draft exactly its greedy tokens: all accepted
    _, request = run(hydra(seed=1), [2, 4], 30)
    c = request.counters
    assert c.draft_accepted == c.draft_proposed > 0 and c.extra["head3_accepted"] == c.extra["head3_proposed"] > 0


def test_hydra_sampling_matches_ar_exactly() -> None:
    config = CONFIGS[2]  # top-p and a repetition penalty: the heads' rows go through every sampling transform
    counts = sample_first_tokens(hydra, config, RUNS)
    assert chi_square_pvalue(counts, exact_ar_distribution(config), RUNS) > 1e-3


def test_hydra_with_prompt_lookup_and_a_reduced_head_vocabulary_is_lossless(monkeypatch: pytest.MonkeyPatch) -> None:
    # heads that can only ever say tokens 0, 2 and 4, beside lookup drafts on a prompt that repeats
    monkeypatch.setattr(sampling_test, "PROMPT", [1, 3, 1, 3, 1])
    config = CONFIGS[0]

    def reduced() -> Hydra:
        # the default confidence: where the heads are unsure, lookup's draft is verified instead
        return Hydra(TinyHeads(2, vocab=[4, 0, 2]), lookup=True, num_draft_tokens=3, adaptive=False)

    counts = sample_first_tokens(reduced, config, RUNS)
    assert chi_square_pvalue(counts, exact_ar_distribution(config), RUNS) > 1e-3


def test_the_check_catches_an_off_by_one_rejection_of_the_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    real = verify_module.verify

    def late(target_logits, draft, q, history, sampler):  # one row late, as in openvino.genai issue 4190
        return real(np.concatenate([target_logits[1:], target_logits[-1:]]), draft, q, history, sampler)

    monkeypatch.setattr("edgegen.strategies.speculative.verify", late)
    config = CONFIGS[0]
    counts = sample_first_tokens(hydra, config, RUNS)
    assert chi_square_pvalue(counts, exact_ar_distribution(config), RUNS) < 1e-6


def test_hydra_options_and_missing_hidden_states() -> None:
    with pytest.raises(EdgegenError, match="confidence"):
        make_strategy("hydra", confidence=2.0)
    no_hidden = TinyLM(seed=1, sharpness=1.5)
    no_hidden.has_hidden = False  # a graph exported before edgegen added the hidden-state output
    no_hidden.manifest = None
    steps = hydra().decode(DecodeRequest(no_hidden, [1, 2], Sampler(SamplingConfig()), 8))
    with pytest.raises(EdgegenError, match="needs the target's hidden states"):
        next(steps)
    assert no_hidden.position == 0  # refused before any work
    other = TinyLM(seed=1, sharpness=1.5)
    other.manifest = SimpleNamespace(name="tiny", hidden_size=64, vocab_size=5)
    with pytest.raises(EdgegenError, match="no heads for model 'tiny'"):
        open_heads(other, None)  # heads ship for the default model only


# --- the real default model -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_hidden_states_are_the_lm_head_input(backend: str, int8_model: Path) -> None:
    from edgegen.models import ensure_embeddings

    # SmolLM2's LM head is its (tied) embedding table, which the input-embedding graphs carry: the cached
    # auto-export gains them here unless an earlier test (superposed decoding) already added them
    manifest = read_manifest(ensure_embeddings(int8_model, progress=False))
    session = open_session(int8_model, manifest, backend)
    assert session.has_hidden
    table = np.load(int8_model / manifest.embeddings.table)
    ids = np.arange(300, 340, dtype=np.int64)
    prefill = session.forward(ids, last_only=True, hidden=True)
    checks = [(prefill, session.hidden_states())]
    checks.append((session.forward(ids[:5], hidden=True), session.hidden_states()))
    for logits, hidden in checks:
        assert hidden.shape == (len(logits), manifest.hidden_size) and hidden.dtype == np.float32
        assert (np.argmax(hidden @ table.T, axis=-1) == np.argmax(logits, axis=-1)).all()
    session.forward(ids[:1])
    with pytest.raises(EdgegenError, match="hidden=True"):
        session.hidden_states()  # a plain forward keeps none


@pytest.fixture(scope="module")
def real_shape_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random heads of the default model's shape (hidden 576, its vocabulary): greedy identity with AR must hold
    whatever the heads say, so it needs no trained run (the shipped heads' acceptance is the bench's)."""
    from edgegen.export.hydra.ship import random_heads

    return random_heads(tmp_path_factory.mktemp("heads") / "heads.safetensors", hidden_size=576, vocab_size=49152,
                        head_vocab=512, num_heads=4)


# OpenVINO's run (~20 s) under scripts/test.sh --all; hydra == AR on the fakes and the hidden-state test on
# both backends stay in CI
@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.extended)])
def test_hydra_greedy_equals_ar_on_the_default_model(backend: str, int8_model: Path, real_shape_heads: Path) -> None:
    from test_speculative import PROMPTS

    import edgegen

    gen = edgegen.load(int8_model, backend=backend)
    proposed = accepted = 0
    for prompt, chat in PROMPTS[:5]:
        ar = gen.generate(prompt, max_new_tokens=32, chat=chat, strategy="ar")
        # every step drafts 4 heads' tokens: the heads' rows are verified (and, random, rejected)
        heads_only = gen.generate(prompt, max_new_tokens=32, chat=chat, strategy="hydra", heads=real_shape_heads,
                                  lookup=False, confidence=0.0, num_draft_tokens=4, adaptive=False)
        # heads never sure enough (confidence 1): prompt lookup beside them drafts where the context repeats
        with_lookup = gen.generate(prompt, max_new_tokens=32, chat=chat, strategy="hydra", heads=real_shape_heads,
                                   confidence=1.0)
        for out in (heads_only, with_lookup):
            assert out.token_ids == ar.token_ids, f"hydra on {backend} differs from AR on {prompt!r}"
        assert heads_only.stats.draft_proposed > heads_only.stats.draft_accepted
        proposed += with_lookup.stats.draft_proposed
        accepted += with_lookup.stats.draft_accepted
    assert 0 < accepted < proposed  # lookup's drafts taken over the unsure heads': accepted and rejected


def test_an_export_without_hidden_states_loads_and_hydra_says_why(int8_model: Path, tmp_path: Path) -> None:
    import edgegen

    old = _without_hidden_output(int8_model, tmp_path / "old")
    gen = edgegen.load(old, backend="onnxruntime")
    assert not gen.session.has_hidden
    assert gen.generate("def f(x):", max_new_tokens=4, chat=False).token_ids  # plain strategies still run
    with pytest.raises(EdgegenError, match="re-export"):
        gen.generate("def f(x):", max_new_tokens=4, chat=False, strategy="hydra")  # refused before the heads


def _without_hidden_output(folder: Path, out: Path) -> Path:
    """A copy of ``folder`` (files hard-linked) as edgegen exported it before the hidden-state edit."""
    import os
    import shutil
    from dataclasses import replace

    from edgegen.export.graph_edits import edit_onnx
    from edgegen.manifest import HIDDEN_STATE

    manifest = read_manifest(folder)
    graph = manifest.graph("onnx")
    builder = graph.path.replace(".edgegen.onnx", ".onnx")
    for rel in (builder, builder + ".data", manifest.tokenizer, manifest.chat_template):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(folder / rel, out / rel)
        except OSError:
            shutil.copy2(folder / rel, out / rel)
    with pytest.MonkeyPatch.context() as patch:  # the edits as they were: no hidden-state output
        patch.setattr("edgegen.export.graph_edits._add_hidden_output", lambda graph, logits: False)
        path, edits = edit_onnx(out / builder, graph.logits)
    assert HIDDEN_STATE not in edits
    replace(manifest, graphs={"onnx": replace(graph, edits=edits)}, embeddings=None).write(out)
    return out
