"""A Generator over a tiny trained tokenizer and a fake Session (tests/fakes.py), for API tests without an export.

The fake model's next token depends on the whole sequence in its cache, so two generations that
share the cache (the bug of issue 12) give other tokens than each alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from fakes import ListSession
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from edgegen.generator import Generator
from edgegen.profiles import load_profile

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS = 2  # <|im_end|>
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
_CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world! naïve café 日本語 😀 🎉",
           "def add(a, b):\n    return a + b\n", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10"] * 20


class PrefixSumLM(ListSession):
    """Logits peaked on a token that depends on every token in the cache (a stand-in for attention)."""

    def __init__(self, manifest: object, vocab: int, max_length: int = 512, row_s: float = 0.0005) -> None:
        super().__init__(max_length)
        self.manifest, self.vocab = manifest, vocab
        self.row_s = row_s  # a sleeping forward lets another thread run mid-generation, as a real runtime does

    def _row(self, cache: list[Any]) -> np.ndarray:
        favourite = (sum(cache) * 7 + len(cache)) % (self.vocab - len(SPECIALS)) + len(SPECIALS)
        row = -np.abs(np.arange(self.vocab, dtype=np.float32) - favourite) / 4
        row[EOS] = -1.0 if len(cache) % 23 == 0 else -50.0  # sometimes close to EOS (sampling)
        return row


def fake_generator(folder: Path, delay_s: float = 0.0005, extra_specials: Sequence[str] = (),
                   template: str = CHATML, max_length: int = 512) -> Generator:
    """A Generator on a byte-level BPE tokenizer trained on a few lines, written into ``folder``
    (``extra_specials``: more special tokens, after SPECIALS; ``template``: its chat template)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[*SPECIALS, *extra_specials],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "chat_template.jinja").write_text(template)
    manifest = SimpleNamespace(name="fake", tokenizer="tokenizer.json", chat_template="chat_template.jinja",
                               bos_token_id=None, add_bos=False, eos_token_ids=[EOS], vocab_size=tok.get_vocab_size(),
                               static_shapes={}, extras={})
    session = PrefixSumLM(manifest, tok.get_vocab_size(), max_length=max_length, row_s=delay_s)
    return Generator(folder, manifest, session, load_profile("cpu"))  # type: ignore[arg-type]
