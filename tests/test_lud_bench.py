"""The LUD bench's arithmetic on hand-made runs: speed-ups, tokens per forward, agreement, perplexity ratio."""

from __future__ import annotations

import math
from pathlib import Path

from edgegen.bench.engines import EngineSpec
from edgegen.bench.lud import LudRun, markdown, perplexity, summarize


def _e(label: str, model: str = "", strategy: str = "ar", **options) -> EngineSpec:
    """An engine of the LUD bench: ``model`` "" is the base model, else the tuned model's label."""
    return EngineSpec(label, "edgegen", "onnxruntime", "int8", Path(model or "base"), strategy, options, model)


BASE = _e("ar-base", consistent_rows=False)


def test_summarize_by_hand() -> None:
    runs = [
        LudRun(BASE, "c1", "code", [1, 2, 3, 4, 5], 50.0, 4, 0, 2.0),
        LudRun(_e("ar-tuned-2row", "p", consistent_rows=True), "c1", "code", [1, 2, 3, 9, 9], 45.0, 4, 0, 2.2),
        LudRun(_e("lexical-t0.7-m2", "p", "lexical"), "c1", "code", [1, 2, 3, 4, 6], 60.0, 2, 4, 2.1),
        LudRun(_e("verified-t0.7-m2", "p", "lexical", verified=True), "c1", "code", [1, 2, 3, 9, 9], 55.0, 3, 2, 2.2),
        LudRun(BASE, "h1", "chat", [7, 8, 9, 1, 2], 40.0, 4, 0, 4.0),
        LudRun(_e("ar-tuned-2row", "p", consistent_rows=True), "h1", "chat", [7, 8, 9, 1, 2], 40.0, 4, 0, 4.0),
        LudRun(_e("lexical-t0.7-m2", "p", "lexical"), "h1", "chat", [7, 8, 9, 1, 2], 50.0, 2, 4, 4.0),
        LudRun(_e("verified-t0.7-m2", "p", "lexical", verified=True), "h1", "chat", [7, 8, 9, 1, 2], 44.0, 2, 2, 4.0),
    ]
    rows = {(r["engine"], r["prompts"]): r for r in summarize(runs)}
    lex = rows[("lexical-t0.7-m2", "code")]
    assert lex["x_ar_base"] == 1.2 and lex["tokens_per_step"] == 2.0
    assert lex["agreement"] == 0.8 and lex["common_prefix"] == 4.0 and lex["ppl_vs_ar_base"] == 1.05
    allrow = rows[("lexical-t0.7-m2", "all")]
    assert allrow["tokens_per_s"] == 55.0 and allrow["x_ar_base"] == round(55.0 / 45.0, 3)
    assert rows[("verified-t0.7-m2", "all")]["identical_to_tuned_ar"] == "2/2"
    assert rows[("ar-base", "chat")]["agreement"] == 1.0
    assert "lexical-t0.7-m2 | code" in markdown(list(rows.values()))


class _Uniform:
    def reset(self) -> None:
        pass

    def forward(self, ids, last_only: bool = False):
        import numpy as np

        return np.zeros((len(ids), 4), np.float32)


def test_perplexity_of_uniform_model_is_vocab_size() -> None:
    assert math.isclose(perplexity(_Uniform(), [1, 2], [3, 0, 1]), 4.0, rel_tol=1e-9)


def test_summarize_two_models_each_against_its_own_tuned_ar() -> None:
    runs = [
        LudRun(BASE, "c1", "code", [1, 2, 3], 50.0, 2, 0, 2.0),
        LudRun(_e("placeholders:ar-tuned", "placeholders"), "c1", "code", [1, 2, 3], 50.0, 2, 0, 2.0),
        LudRun(_e("placeholders:ar-tuned-2row", "placeholders", consistent_rows=True),
               "c1", "code", [1, 2, 3], 40.0, 2, 0, 2.0),
        LudRun(_e("placeholders:verified-t0.3-m2", "placeholders", "lexical", verified=True),
               "c1", "code", [1, 2, 3], 45.0, 2, 2, 2.0),
        LudRun(_e("lora:ar-tuned", "lora"), "c1", "code", [1, 2, 4], 40.0, 2, 0, 2.4),
        LudRun(_e("lora:ar-tuned-2row", "lora", consistent_rows=True), "c1", "code", [1, 2, 5], 40.0, 2, 0, 2.4),
        LudRun(_e("lora:verified-t0.3-m2", "lora", "lexical", verified=True), "c1", "code", [1, 2, 5], 48.0, 1, 2, 2.4),
        LudRun(_e("lora:lexical-t0.3-m2", "lora", "lexical"), "c1", "code", [1, 2, 3], 60.0, 1, 2, 2.2),
    ]
    rows = {(r["engine"], r["prompts"]): r for r in summarize(runs)}
    assert rows[("lora:lexical-t0.3-m2", "code")]["x_ar_tuned"] == 1.5  # against lora:ar-tuned (40)
    assert rows[("lora:lexical-t0.3-m2", "code")]["x_ar_base"] == 1.2
    assert rows[("lora:ar-tuned", "code")]["agreement"] == round(2 / 3, 3)
    assert rows[("lora:verified-t0.3-m2", "all")]["identical_to_tuned_ar"] == "1/1"
    assert rows[("placeholders:verified-t0.3-m2", "all")]["x_ar_tuned"] == 0.9
