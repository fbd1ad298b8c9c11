"""A correct HF ``tokenizers`` tokenizer built from a SentencePiece-style GGUF vocabulary (pieces, scores, types).

transformers' GGUF loader builds a BPE without merges for a GGUF that carries none (Gemma 3): every
text then encodes one character per token. SentencePiece BPE needs no merges list: it repeatedly joins
the adjacent pair whose concatenation is the highest-scoring piece. A ``tokenizers`` BPE whose merges
are ranked by the score of the piece they produce does the same, so the merges are derived here from
the vocabulary and the scores (transformers' own ``generate_merges``, the one its SentencePiece
converter uses). Around the model: spaces become "▁" (no dummy prefix when the GGUF says so), bytes
outside the vocabulary fall back to ``<0xNN>`` pieces, control pieces (type 3) are special tokens and
user-defined pieces (type 4: newline and space runs, HTML tags) are matched whole before BPE, as
SentencePiece matches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# tokenizer.ggml.token_type values (llama.cpp's LLAMA_TOKEN_TYPE_*, SentencePiece's piece types)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer fields of a GGUF file."""

    model: str  # tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    add_bos: bool
    add_space_prefix: bool
    merges: list[str]  # "left right" pairs in rank order (byte-level BPE files); empty for SentencePiece
    pre: str  # tokenizer.ggml.pre: llama.cpp's name for the pre-tokenizer (e.g. "smollm", "default")


def read_gguf_vocab(path: Path) -> GGUFVocab:
    """Read the tokenizer fields of the GGUF file at `path`."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key: str, default: object = None) -> object:
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    def array(key: str) -> list:
        # ReaderField.contents() converts element by element (minutes for 262k pieces); read the parts.
        f = reader.fields.get(key)
        if f is None:
            return []
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
        return [x for i in f.data for x in f.parts[i].tolist()]

    tokens = array("tokenizer.ggml.tokens")
    return GGUFVocab(
        model=str(field("tokenizer.ggml.model", "")),
        tokens=tokens,
        scores=[float(s) for s in array("tokenizer.ggml.scores")] or [0.0] * len(tokens),
        types=[int(t) for t in array("tokenizer.ggml.token_type")] or [NORMAL] * len(tokens),
        bos_id=field("tokenizer.ggml.bos_token_id"),
        eos_id=field("tokenizer.ggml.eos_token_id"),
        unk_id=field("tokenizer.ggml.unknown_token_id"),
        add_bos=bool(field("tokenizer.ggml.add_bos_token", True)),
        add_space_prefix=bool(field("tokenizer.ggml.add_space_prefix", True)),
        merges=array("tokenizer.ggml.merges"),
        pre=str(field("tokenizer.ggml.pre", "default")),
    )


def sentencepiece_bpe_tokenizer(vocab: GGUFVocab):  # -> tokenizers.Tokenizer
    """A ``tokenizers.Tokenizer`` with SentencePiece BPE semantics for a "llama"-model GGUF vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import generate_merges

    if vocab.model != "llama":
        raise ValueError(f"not a SentencePiece vocabulary (tokenizer.ggml.model = {vocab.model!r})")
    ids = {piece: i for i, piece in enumerate(vocab.tokens)}
    # Only pieces SentencePiece can form by merging (normal, user-defined, unused) take part in merges.
    pieces = list(zip(vocab.tokens, vocab.scores, vocab.types, strict=True))
    mergeable = {p: s for p, s, t in pieces if t in (NORMAL, USER_DEFINED, UNUSED)}
    merges = generate_merges(ids, mergeable)
    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
    tok = Tokenizer(BPE(vocab=ids, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True, dropout=None))
    steps = [normalizers.Replace(" ", "▁")]
    if vocab.add_space_prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if vocab.add_space_prefix else [])
    )
    tok.add_tokens([AddedToken(p, special=False, normalized=False)
                    for p, _, t in pieces if t == USER_DEFINED])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False)
                            for p, _, t in pieces if t == CONTROL])
    if vocab.add_bos and vocab.bos_id is not None:
        bos = vocab.tokens[vocab.bos_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab.bos_id)]
        )
    return tok


def tokenizer_config(vocab: GGUFVocab, extra_eos: Sequence[str] = ()) -> dict[str, object]:
    """tokenizer_config.json for the files written next to `sentencepiece_bpe_tokenizer`'s tokenizer.json."""
    def name(i: int | None) -> str | None:
        return vocab.tokens[i] if i is not None and 0 <= i < len(vocab.tokens) else None

    config: dict[str, object] = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # the generic class: the tokenizer.json holds everything
        "bos_token": name(vocab.bos_id),
        "eos_token": name(vocab.eos_id),
        "unk_token": name(vocab.unk_id),
        "add_bos_token": vocab.add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 30,
    }
    if extra_eos:
        config["extra_special_tokens"] = list(extra_eos)
    return {k: v for k, v in config.items() if v is not None}
