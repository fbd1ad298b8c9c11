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
    from edgegen.lud import shipped_delta_sha256

    rows, info = read_packed_lud(shipped_delta())
    assert info["placeholder_ids"] == [13, 14, 15, 16] and tuple(rows.shape) == (4, 576)
    assert info["target_name"] == "SmolLM2-135M-Instruct" and info["target_vocab_size"] == 49152
    assert shipped_delta().stat().st_size < 3_000_000
    assert info.get("trainable", "placeholders") in ("placeholders", "lora")
    assert shipped_delta_sha256() is not None and len(shipped_delta_sha256()) == 64


def test_stale_default_lud_export_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached rebuild of default-lud is reused only while it records the shipped delta's sha256."""
    import json

    from edgegen import lud

    folder = tmp_path / "m"
    folder.mkdir()
    monkeypatch.setattr(lud, "is_model_folder", lambda f: Path(f) == folder)
    for extras, current in (({"lud": {"delta_sha256": lud.shipped_delta_sha256()}}, True),
                            ({"lud": {"delta_sha256": "0" * 64}}, False), ({"lud": {}}, False)):
        monkeypatch.setattr(lud, "read_manifest", lambda f, e=extras: type("M", (), {"extras": e})())
        assert lud.is_current(folder) is current, json.dumps(extras)
    assert lud.is_current(tmp_path / "absent") is False


@pytest.mark.slow
def test_default_lud_identities(cache_root: Path, int8_model: Path) -> None:
    lud = edgegen.load("default-lud", backend="onnxruntime", consistent_rows=True)
    assert lud.manifest.extras["lud"]["placeholder_ids"] == [13, 14, 15, 16]
    same_rows = lud.manifest.extras["lud"].get("trainable", "placeholders") == "placeholders"
    base = edgegen.load(int8_model, backend="onnxruntime", consistent_rows=True)
    gained = 0
    for prompt, chat in PROMPTS:
        ar = lud.generate(prompt, max_new_tokens=48, chat=chat)
        if same_rows:  # placeholder rows only: ordinary rows are the base's, AR output of tuned and base agree
            assert base.generate(prompt, max_new_tokens=48, chat=chat).token_ids == ar.token_ids
        verified = lud.generate(prompt, max_new_tokens=48, chat=chat, strategy="lexical", verified=True)
        assert verified.token_ids == ar.token_ids
        assert lud.generate(prompt, max_new_tokens=48, chat=chat, strategy="lexical", threshold=1.0).token_ids \
            == ar.token_ids
        gained += verified.stats.draft_accepted
    assert gained > 0  # the trained placeholders predicted some units right
