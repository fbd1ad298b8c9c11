"""In-process Sessions for strategy tests: tiny deterministic models with a real KV-cache contract.

Every fake keeps its cache as a list (one entry per position), so ``position``, ``trim``, ``reset`` and
``common_prefix`` (nothing reused: each prefill starts from an empty cache) are shared; a fake only says
what its logits are.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from edgegen.runtimes.base import KVSnapshot


class ListSession:
    """The Session bookkeeping the fakes share; ``_row(cache)`` gives the logits after the cache's last entry."""

    backend, device = "numpy", "CPU"
    row_s = 0.0  # seconds each forwarded row costs: makes measured costs grow with rows despite a busy machine
    has_hidden = True  # the "final hidden state" of a row is its prefix itself (hidden_of): fake heads read it

    def __init__(self, max_length: int) -> None:
        self.cache: list[Any] = []  # token ids (or states), one per cached position
        self.max_length = max_length
        self._hidden: np.ndarray | None = None

    @property
    def position(self) -> int:
        return len(self.cache)

    def _row(self, cache: list[Any]) -> np.ndarray:
        raise NotImplementedError

    def _append(self, entries: Sequence[Any]) -> np.ndarray:
        """Cache ``entries`` one by one: the logits after each, (len(entries), vocab)."""
        rows = []
        for entry in entries:
            self.cache.append(entry)
            rows.append(self._row(self.cache))
        return np.stack(rows)

    def forward(self, token_ids: np.ndarray, last_only: bool = False, hidden: bool = False) -> np.ndarray:
        ids = [int(t) for t in np.asarray(token_ids).tolist()]
        if self.row_s:
            time.sleep(self.row_s * len(ids))
        start = len(self.cache)
        logits = self._append(ids)
        self._hidden = None
        if hidden:
            rows = np.stack([self.hidden_of(self.cache[: start + i + 1]) for i in range(len(ids))])
            self._hidden = rows[-1:] if last_only else rows
        return logits[-1:] if last_only else logits

    def hidden_of(self, prefix: Sequence[int]) -> np.ndarray:
        """The fake final hidden state after ``prefix``: its ids, then -1 (max_length values)."""
        out = np.full(self.max_length, -1.0, np.float32)
        out[: len(prefix)] = prefix
        return out

    def hidden_states(self) -> np.ndarray:
        assert self._hidden is not None, "forward(..., hidden=True) first"
        return self._hidden

    def common_prefix(self, token_ids: Sequence[int]) -> int:
        return 0  # keeps nothing: every prefill starts from an empty cache

    def trim(self, length: int) -> None:
        if not 0 <= length <= len(self.cache):
            raise ValueError(f"cannot trim a cache of {len(self.cache)} tokens to {length}")
        del self.cache[length:]

    def reset(self) -> None:
        self.cache = []


class SnapshotSession:
    """Mixed into a ListSession whose cache holds token ids: keeps the common prefix of a new prompt, as the
    real sessions do, and copies its cache out and back (Session.snapshot / restore). ``snapshots`` counts copies."""

    snapshots = 0

    def common_prefix(self, token_ids: Sequence[int]) -> int:
        n = 0
        for held, new in zip(self.cache, token_ids, strict=False):  # type: ignore[attr-defined]
            if held != new:
                break
            n += 1
        return n

    def snapshot(self) -> KVSnapshot:
        self.snapshots += 1
        return KVSnapshot(tuple(self.cache), (np.asarray(self.cache, np.int64),))  # type: ignore[attr-defined]

    def restore(self, snapshot: KVSnapshot, length: int | None = None) -> None:
        self.cache = snapshot.arrays[0][: snapshot.length(length)].tolist()


class TinyLM(ListSession):
    """Logits that are a fixed random function of the whole prefix."""

    def __init__(self, seed: int, sharpness: float, vocab: int = 5, max_length: int = 64) -> None:
        super().__init__(max_length)
        self.seed, self.sharpness, self.vocab = seed, sharpness, vocab

    def logits_after(self, prefix: Sequence[int]) -> np.ndarray:
        """The model's next-token logits after ``prefix`` (vocab,)."""
        rng = np.random.default_rng([self.seed, *prefix])
        return (rng.normal(size=self.vocab) * self.sharpness).astype(np.float32)

    def _row(self, cache: list[Any]) -> np.ndarray:
        return self.logits_after(cache)


class NoisyRowsLM(TinyLM):
    """TinyLM whose rows after a forward's first move by up to ``noise`` per logit, a fixed function of the prefix
    and the row's place in the call, as a static NPU graph's rows do; a call's first row is exact. ``row_noise``
    (Session.row_noise) says so when ``declared``."""

    def __init__(self, seed: int, sharpness: float, noise: float, declared: bool = True, vocab: int = 5) -> None:
        super().__init__(seed, sharpness, vocab=vocab)
        self.noise, self.row_noise = noise, noise if declared else 0.0

    def _append(self, entries: Sequence[Any]) -> np.ndarray:
        rows = super()._append(entries)
        first = len(self.cache) - len(entries)  # cache position of the call's first row
        for i in range(1, len(rows)):
            rng = np.random.default_rng([self.seed, 1000 + i, *self.cache[: first + i + 1]])
            rows[i] += rng.uniform(-self.noise, self.noise, self.vocab).astype(np.float32)
        return rows


class TinyLexLM(ListSession):
    """A LUD-tuned model: real tokens 0..real-1, placeholders whose rows look ahead.

    Real rows are a fixed random function of the real prefix; the row of placeholder P_j predicts the
    AR-greedy token j+1 steps ahead, with a random confidence, and (by a hash of the prefix, with
    probability ``wrong``) a confident wrong token instead.
    """

    REAL = 6  # real tokens 0..5
    PIDS = (6, 7, 8)
    VOCAB = 9

    def __init__(self, wrong: float = 0.0, lud: dict | None = None, max_length: int = 96, row_s: float = 0.0) -> None:
        super().__init__(max_length)
        self.wrong, self.row_s = wrong, row_s
        extras = {"lud": {"placeholder_ids": list(self.PIDS), "span": 3, "default_threshold": 0.6}} if lud is None \
            else lud
        self.manifest = SimpleNamespace(name="tiny-lud", extras=extras)

    def _real(self, prefix: tuple[int, ...]) -> np.ndarray:
        rng = np.random.default_rng([7, *prefix])
        out = np.full(self.VOCAB, -30.0, np.float32)
        out[: self.REAL] = rng.normal(size=self.REAL) * 3.0
        return out

    def _greedy(self, prefix: tuple[int, ...], n: int) -> list[int]:
        seq = list(prefix)
        for _ in range(n):
            seq.append(int(np.argmax(self._real(tuple(seq)))))
        return seq[len(prefix):]

    def _row(self, cache: list[Any]) -> np.ndarray:
        if cache[-1] not in self.PIDS:
            return self._real(tuple(cache))
        k = next(i for i, t in enumerate(cache) if t in self.PIDS)  # the real prefix ends before the first placeholder
        assert cache[k:] == list(self.PIDS[: len(cache) - k]), "placeholders must follow the real tokens in order"
        j = len(cache) - k  # P_j predicts the token j+1 steps after the real prefix
        rng = np.random.default_rng([11, *cache])
        guess = self._greedy(tuple(cache[:k]), j + 1)[-1]
        if rng.random() < self.wrong:
            guess = (guess + 1) % self.REAL
        out = np.full(self.VOCAB, -30.0, np.float32)
        out[: self.REAL] = rng.normal(size=self.REAL) * 0.3
        out[guess] = rng.uniform(-1.0, 4.0)  # confidence from low to high
        return out


class EmbeddingLM(ListSession):
    """A Session with input embeddings: state_t = tanh(A state_{t-1} + x_t), logits_t = W state_t + bias.

    Its cache holds the states. ``forwards`` counts calls (superposed decoding: one per step).
    """

    VOCAB, HIDDEN, EOS = 40, 16, 0
    has_hidden = False

    def __init__(self, seed: int = 0, sharpness: float = 2.0, eos_bias: float = -4.0) -> None:
        super().__init__(max_length=512)
        rng = np.random.default_rng(seed)
        self.table = rng.normal(size=(self.VOCAB, self.HIDDEN)).astype(np.float32)
        self.a = (rng.normal(size=(self.HIDDEN, self.HIDDEN)) * 0.9 / np.sqrt(self.HIDDEN)).astype(np.float32)
        self.w = (rng.normal(size=(self.HIDDEN, self.VOCAB)) * sharpness).astype(np.float32)
        self.bias = np.zeros(self.VOCAB, np.float32)
        self.bias[self.EOS] = eos_bias
        self.forwards = 0

    def embed(self, token_ids: np.ndarray) -> np.ndarray:
        return self.table[np.asarray(token_ids, np.int64)]

    def _append(self, entries: Sequence[Any]) -> np.ndarray:
        rows = []
        for x in entries:
            h = np.tanh(self.a @ (self.cache[-1] if self.cache else np.zeros(self.HIDDEN, np.float32)) + x)
            self.cache.append(h)
            rows.append(h @ self.w + self.bias)
        return np.stack(rows).astype(np.float32)

    def forward_embeddings(self, embeddings: np.ndarray, last_only: bool = False) -> np.ndarray:
        self.forwards += 1
        logits = self._append(list(np.asarray(embeddings, np.float32)))
        return logits[-1:] if last_only else logits

    def forward(self, token_ids: np.ndarray, last_only: bool = False) -> np.ndarray:
        return self.forward_embeddings(self.embed(token_ids), last_only)


class TorchSession(ListSession):
    """A Session over a Hugging Face causal LM, recomputing the whole cache per call (exact; tiny models only)."""

    backend = "torch"
    has_hidden = False

    def __init__(self, model: Any, manifest: Any = None, max_length: int = 200) -> None:
        super().__init__(max_length)
        self.model, self.manifest = model, manifest

    def forward(self, token_ids: np.ndarray, last_only: bool = False) -> np.ndarray:
        import torch

        new = [int(t) for t in np.asarray(token_ids).tolist()]
        self.cache.extend(new)
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([self.cache])).logits[0, -len(new):].numpy()
        return logits[-1:] if last_only else logits


class BrokenLM(ListSession):
    """Logits that turn to ``value`` (NaN or inf) from position ``broken_at`` on: a corrupt model."""

    def __init__(self, value: float, broken_at: int, vocab: int = 5) -> None:
        super().__init__(max_length=64)
        self.value, self.broken_at, self.vocab = value, broken_at, vocab

    def _row(self, cache: list[Any]) -> np.ndarray:
        row = np.linspace(0.0, 1.0, self.vocab, dtype=np.float32)
        if len(cache) > self.broken_at:
            row[len(cache) % self.vocab] = self.value
        return row


class TinyHeads:
    """Fake Hydra heads (the edgegen.heads.HydraHeads surface the drafter runs) over a ListSession's hidden
    states, which hold the prefix: head k scores the next token after prefix + the tokens taken so far with a
    TinyLM of its own (``seed``; the target's seed gives heads that agree with it), over ``vocab``."""

    def __init__(self, seed: int, sharpness: float = 1.0, num_heads: int = 3, vocab: Sequence[int] = range(5),
                 vocab_size: int = 5) -> None:
        self.num_heads, self.vocab_size = num_heads, vocab_size
        self.vocab = np.asarray(list(vocab), np.int64)
        self.seed, self.sharpness = seed, sharpness

    def head(self, k: int, state: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert 0 <= k < self.num_heads
        state = state.copy()
        logits = []
        for row, token in zip(state, tokens, strict=True):
            assert (row < 0).any(), "the fake hidden state is full"
            row[int(np.argmax(row < 0))] = token  # the prefix gains the token
            scores = _tiny_scores(self.seed, self.sharpness, self.vocab_size, tuple(int(t) for t in row[row >= 0]))
            logits.append(scores[self.vocab])
        return state, np.stack(logits)


@lru_cache(maxsize=100_000)
def _tiny_scores(seed: int, sharpness: float, vocab: int, prefix: tuple[int, ...]) -> np.ndarray:
    """TinyLM's logits, remembered: the chi-square runs ask for the same short prefixes thousands of times."""
    return TinyLM(seed, sharpness, vocab=vocab).logits_after(prefix)


def tiny_llama(folder: Path, texts: list[str], vocab_size: int, layers: int, vocab_extra: int = 0,
               hidden: int = 32) -> Path:
    """A tiny Llama HF folder (4 heads of hidden / 4, tied head, peaked outputs) with a byte-level BPE tokenizer of
    ``vocab_size`` trained on ``texts``, plus ``vocab_extra`` model-only ids: a target to train against."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(folder / "tokenizer.json"))
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size() + vocab_extra, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True, eos_token_id=0, pad_token_id=1,
                      bos_token_id=None, initializer_range=0.3)  # peaked outputs: a teacher with something to learn
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    return folder


class AllowedSet:
    """A sampling.Constraint that allows a fixed set of tokens and records the tokens it consumed."""

    def __init__(self, vocab: int, tokens: list[int]) -> None:
        self.mask = np.zeros(vocab, bool)
        self.mask[tokens] = True
        self.seen: list[int] = []

    def allowed(self) -> np.ndarray:
        return self.mask

    def consume(self, tokens: list[int]) -> int:
        n = next((i for i, t in enumerate(tokens) if not self.mask[t]), len(tokens))
        self.seen.extend(tokens[:n])
        return n

    def rollback(self, n: int) -> None:
        del self.seen[len(self.seen) - n :]
