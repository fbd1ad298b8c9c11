"""Tokenization and chat templates match transformers; streaming never splits a character."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegen.errors import EdgegenError
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


# ---- issue 12: the tokenizer and chat template come with a model folder; bad ones are one clear error


@pytest.fixture
def fake_folder(tmp_path: Path) -> Path:
    from fake_generator import fake_generator

    fake_generator(tmp_path)
    return tmp_path


def _with_template(folder: Path, template: str) -> TextTokenizer:
    from types import SimpleNamespace

    (folder / "t.jinja").write_text(template)
    manifest = SimpleNamespace(name="fake", tokenizer="tokenizer.json", chat_template="t.jinja", bos_token_id=None,
                               add_bos=False, eos_token_ids=[2])
    return TextTokenizer(folder, manifest)  # type: ignore[arg-type]


def test_stream_decoder_on_a_byte_level_tokenizer(fake_folder: Path) -> None:
    tok = _with_template(fake_folder, "{{ messages[0]['content'] }}")
    for text in ("naïve café 😀 日本語のテキスト", "emoji🎉🎉 end"):
        ids = tok.encode(text)
        decoder = StreamDecoder(tok)
        pieces = [decoder.push([i]) for i in ids] + [decoder.flush()]
        assert all("\ufffd" not in p for p in pieces) and "".join(pieces) == text
    cut = tok.encode("😀")[:-1]  # generation ended inside a character: flush gives what decode gives
    decoder = StreamDecoder(tok)
    assert decoder.push(cut) == "" and decoder.flush() == tok.decode(cut)


def test_corrupt_tokenizer_names_the_file(fake_folder: Path) -> None:
    (fake_folder / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(EdgegenError, match=r"cannot read the tokenizer .*tokenizer\.json"):
        _with_template(fake_folder, "{{ messages }}")


def test_template_syntax_error_is_one_clear_error(fake_folder: Path) -> None:
    with pytest.raises(EdgegenError, match=r"chat template .*t\.jinja is invalid"):
        _with_template(fake_folder, "{% for m in messages %}{{ m.content }")


@pytest.mark.parametrize("template", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",  # silent nested loops
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",  # output grows
    "{{ 'x' * 10000000000 }}",  # one huge string in one step
    "{{ 2 ** 100000000 }}",  # one huge number
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",  # unbounded recursion
    "{{ messages.__class__.__mro__ }}",  # the sandbox: no attribute escapes
    "{{ messages.append(1) }}",  # immutable inputs
])
def test_hostile_templates_are_bounded(fake_folder: Path, template: str) -> None:
    tok = _with_template(fake_folder, template)
    with pytest.raises(EdgegenError, match="chat template failed"):
        tok.render_chat([{"role": "user", "content": "hi"}])
