"""Tokenization and chat templates match transformers; streaming never splits a character."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegen.manifest import read_manifest
from edgegen.tokenizer import StreamDecoder, TextTokenizer


@pytest.fixture(scope="module")
def tok(int8_model: Path) -> TextTokenizer:
    return TextTokenizer(int8_model, read_manifest(int8_model))


def test_chat_template_matches_transformers(tok: TextTokenizer, hf_dir: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(hf_dir)
    for messages in ([{"role": "user", "content": "Hi there"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]):
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert tok.render_chat(messages) == text
        assert tok.encode_prompt(messages, chat=True) == hf(text, add_special_tokens=False)["input_ids"]


def test_raw_prompt_tokens(tok: TextTokenizer) -> None:
    ids = tok.encode_prompt("def fibonacci(n):", chat=False)
    assert ids == [1604, 3987, 46477, 24, 94, 727]  # the original SmolLM2 tokenizer: no BOS
    assert tok.decode(ids) == "def fibonacci(n):"


@pytest.mark.parametrize("text", ["naïve café 😀 日本語のテキスト", "  leading spaces\n\ttabs", "emoji🎉🎉 end"])
def test_stream_decoder_never_splits_characters(tok: TextTokenizer, text: str) -> None:
    ids = tok.encode(text)
    decoder = StreamDecoder(tok)
    pieces = [decoder.push([i]) for i in ids] + [decoder.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids) == text
