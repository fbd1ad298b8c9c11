"""The shipped LUD-tuned default model (real SmolLM2, exported from the packaged delta): the strategy's
identities on real graphs, and the delta's facts."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgegen

PROMPTS = [("def fibonacci(n):", False), ("class Stack:\n    def __init__(self):\n", False),
           ("What is the capital of France?", True), ("Give three facts about bees.", True)]


def test_shipped_delta_matches_the_default_model() -> None:
    pytest.importorskip("torch")
    from edgegen.export.lud import read_packed_lud
    from edgegen.export.lud.ship import shipped_delta

    rows, info = read_packed_lud(shipped_delta())
    assert info["placeholder_ids"] == [13, 14, 15, 16] and tuple(rows.shape) == (4, 576)
    assert info["target_name"] == "SmolLM2-135M-Instruct" and info["target_vocab_size"] == 49152
    assert shipped_delta().stat().st_size < 100_000


@pytest.mark.slow
def test_default_lud_identities(cache_root: Path, int8_model: Path) -> None:
    lud = edgegen.load("default-lud", backend="onnxruntime", consistent_rows=True)
    assert lud.manifest.extras["lud"]["placeholder_ids"] == [13, 14, 15, 16]
    base = edgegen.load(int8_model, backend="onnxruntime", consistent_rows=True)
    gained = 0
    for prompt, chat in PROMPTS:
        ar = lud.generate(prompt, max_new_tokens=48, chat=chat)
        # Ordinary rows are the base model's: AR output of the tuned and the base model agree.
        assert base.generate(prompt, max_new_tokens=48, chat=chat).token_ids == ar.token_ids
        verified = lud.generate(prompt, max_new_tokens=48, chat=chat, strategy="lexical", verified=True)
        assert verified.token_ids == ar.token_ids
        assert lud.generate(prompt, max_new_tokens=48, chat=chat, strategy="lexical", threshold=1.0).token_ids \
            == ar.token_ids
        gained += verified.stats.draft_accepted
    assert gained > 0  # the trained placeholders predicted some units right
