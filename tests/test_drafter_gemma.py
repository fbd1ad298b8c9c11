"""The FastDraft recipe on the real Gemma 3 270M (262,144-token vocabulary): a drafter built from its GGUF with a
trained reduced head, exported, and speculative greedy output equal to AR on both backends (scripts/test.sh --all)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_families import BACKENDS, GEMMA_PROMPTS, gemma3_fp32  # noqa: F401  (the fixture, shared by its cache)
from test_gguf_tokenizer import gemma_gguf

import edgegen
from edgegen.export.drafter import TrainConfig, train_drafter
from edgegen.export.drafter.config import STDLIB
from edgegen.manifest import read_manifest


@pytest.mark.slow
@pytest.mark.real_gemma
def test_gemma3_drafter_from_the_recipe_keeps_speculative_equal_to_ar(gemma3_fp32: Path,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("Rivers flow to the sea and the sea returns rain to the hills. " * 200)
    cfg = TrainConfig(target=str(gemma_gguf()), out=str(tmp_path / "run"), layers=2, stage="pretrain", steps=2,
                      seq_len=64, batch_size=2, head_vocab=4096, code_globs=[f"{STDLIB}/json/*.py"],
                      text_globs=[f"{text}/*.txt"], corpus_tokens=20000, val_tokens=256, eval_tokens=128,
                      quality_gate=False, progress=False)
    summary = train_drafter(cfg, echo=lambda m: None)
    drafter = Path(summary["model"])
    facts = read_manifest(drafter).extras["drafter"]
    assert len(facts["head_vocab"]) == 4096 and facts["target_vocab_size"] == 262144
    for backend in BACKENDS:
        gen = edgegen.load(gemma3_fp32, draft=drafter, backend=backend)
        for prompt, chat in GEMMA_PROMPTS:
            ar = gen.generate(prompt, max_new_tokens=32, chat=chat, strategy="ar", ignore_eos=True)
            spec = gen.generate(prompt, max_new_tokens=32, chat=chat, strategy="speculative", ignore_eos=True)
            assert spec.token_ids == ar.token_ids, f"{backend} {prompt!r}"
            assert spec.stats.draft_proposed > 0
