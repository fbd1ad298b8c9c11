"""A Generator over a tiny trained tokenizer and a fake Session, for API tests that need no export.

The fake model's next token depends on the whole sequence in its cache, so two generations that
share the cache (the bug of issue 12) give other tokens than each alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from edgegen.generator import Generator
from edgegen.profiles import load_profile

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS = 2  # <|im_end|>
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
_CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world! naïve café 日本語 😀 🎉",
           "def add(a, b):\n    return a + b\n", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10"] * 20


class FakeSession:
    """A Session whose logits are a function of every token in its cache (a stand-in for attention)."""

    backend = "fake"
    device = "CPU"

    def __init__(self, manifest: object, vocab: int, max_length: int = 512, delay_s: float = 0.0005) -> None:
        self.manifest = manifest
        self.vocab, self._max, self._delay = vocab, max_length, delay_s
        self.cache: list[int] = []

    @property
    def position(self) -> int:
        return len(self.cache)

    @property
    def max_length(self) -> int:
        return self._max

    def reset(self) -> None:
        self.cache = []

    def common_prefix(self, token_ids) -> int:
        return 0  # keeps nothing: every prefill starts from an empty cache

    def trim(self, length: int) -> None:
        if not 0 <= length <= len(self.cache):
            raise ValueError(f"cannot trim a cache of {len(self.cache)} tokens to {length}")
        del self.cache[length:]

    def forward(self, token_ids: np.ndarray, last_only: bool = False) -> np.ndarray:
        time.sleep(self._delay)  # lets another thread run mid-generation, as a real runtime call does
        rows = []
        for t in np.asarray(token_ids).tolist():
            self.cache.append(int(t))
            favourite = (sum(self.cache) * 7 + len(self.cache)) % (self.vocab - len(SPECIALS)) + len(SPECIALS)
            row = -np.abs(np.arange(self.vocab, dtype=np.float32) - favourite) / 4
            row[EOS] = -1.0 if len(self.cache) % 23 == 0 else -50.0  # sometimes close to EOS (sampling)
            rows.append(row)
        logits = np.stack(rows)
        return logits[-1:] if last_only else logits


def fake_generator(folder: Path, delay_s: float = 0.0005) -> Generator:
    """A Generator on a byte-level BPE tokenizer trained on a few lines, written into ``folder``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "chat_template.jinja").write_text(CHATML)
    manifest = SimpleNamespace(name="fake", tokenizer="tokenizer.json", chat_template="chat_template.jinja",
                               bos_token_id=None, add_bos=False, eos_token_ids=[EOS], vocab_size=tok.get_vocab_size(),
                               static_shapes={}, extras={})
    session = FakeSession(manifest, tok.get_vocab_size(), delay_s=delay_s)
    return Generator(folder, manifest, session, load_profile("cpu"))  # type: ignore[arg-type]
