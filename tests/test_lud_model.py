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
    from edgegen.artifacts import SHIPPED_LUD_DELTA, shipped_file
    from edgegen.export.lud import read_packed_lud
    from edgegen.integrity import sha256_file

    delta = shipped_file(SHIPPED_LUD_DELTA)
    rows, info = read_packed_lud(delta)
    assert info["placeholder_ids"] == [13, 14, 15, 16] and tuple(rows.shape) == (4, 576)
    assert info["target_name"] == "SmolLM2-135M-Instruct" and info["target_vocab_size"] == 49152
    assert delta.stat().st_size < 3_000_000
    assert info.get("trainable", "placeholders") in ("placeholders", "lora")
    assert len(sha256_file(delta)) == 64


def test_stale_default_lud_export_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached rebuild of default-lud is reused only while it was built from the shipped delta: its cache
    folder is keyed by the delta's sha256 (edgegen.artifacts), so another delta is another folder, rebuilt."""
    from edgegen import artifacts

    monkeypatch.setenv("EDGEGEN_CACHE", str(tmp_path / "cache"))
    built: list[Path] = []

    def fake_export(delta: Path, out: Path, progress: bool = True) -> Path:
        built.append(Path(out))
        Path(out).mkdir(parents=True)
        (Path(out) / "edgegen.json").write_text("{}")
        return Path(out)

    monkeypatch.setattr("edgegen.export.lud.ship.export_default_lud", fake_export)
    first = artifacts.default_lud_model("cpu", progress=False)
    assert artifacts.default_lud_model("cpu", progress=False) == first and built == [first]  # current: reused
    other = tmp_path / "other-delta.safetensors"
    other.write_bytes(b"another delta")
    monkeypatch.setattr(artifacts, "shipped_file", lambda name: other)
    second = artifacts.default_lud_model("cpu", progress=False)
    assert second != first and built == [first, second]  # stale: rebuilt into the new delta's folder


@pytest.mark.slow
@pytest.mark.extended  # builds and runs the LUD-tuned default model (~160 s): scripts/test.sh --all; tiny-model
# lexical == AR tests run in CI (test_lexical.py)
def test_default_lud_identities(cache_root: Path, int8_model: Path) -> None:
    lud = edgegen.load("default-lud", backend="onnxruntime")
    assert lud.manifest.extras["lud"]["placeholder_ids"] == [13, 14, 15, 16]
    same_rows = lud.manifest.extras["lud"].get("trainable", "placeholders") == "placeholders"
    base = edgegen.load(int8_model, backend="onnxruntime")
    gained = 0
    for prompt, chat in PROMPTS:
        ar = lud.generate(prompt, max_new_tokens=48, chat=chat)
        if same_rows:  # placeholder rows only: ordinary rows are the base's, AR output of tuned and base agree
            assert base.generate(prompt, max_new_tokens=48, chat=chat).token_ids == ar.token_ids
        adaptive = lud.generate(prompt, max_new_tokens=48, chat=chat, strategy="lexical", verified=True)
        assert adaptive.token_ids == ar.token_ids
        # gained counts the fixed-span run (all placeholders every step): the adaptive count follows measured forward
        # times, so on a busy machine it may offer none at the few steps where a placeholder is confident
        verified = lud.generate(prompt, max_new_tokens=48, chat=chat, strategy="lexical", verified=True,
                                adaptive=False)
        assert verified.token_ids == ar.token_ids
        assert lud.generate(prompt, max_new_tokens=48, chat=chat, strategy="lexical", threshold=1.0).token_ids \
            == ar.token_ids
        gained += verified.stats.draft_accepted
    assert gained > 0  # the trained placeholders predicted some units right
