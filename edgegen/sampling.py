"""Turning logits into tokens: repetition penalty, temperature, top-k, top-p, in NumPy.

``distribution`` returns the fully processed next-token distribution; speculative sampling needs
exactly that vector for both the target (p) and the drafter (q), so AR and speculative decoding
share this one function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgegen.errors import EdgegenError

# Nucleus search first looks at this many top tokens; the full sort runs only when their mass < top_p.
_NUCLEUS_WINDOW = 256


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings. ``temperature == 0`` means greedy (argmax after the penalty)."""

    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off; HF semantics (divide positive logits, multiply negative)
    seed: int | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise EdgegenError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise EdgegenError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise EdgegenError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise EdgegenError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: np.ndarray, history: Sequence[int], penalty: float) -> np.ndarray:
    """Penalise tokens already in ``history`` (prompt and generated); returns a new array."""
    if penalty == 1.0 or len(history) == 0:
        return logits
    seen = np.unique(np.asarray(history, dtype=np.int64))
    out = logits.astype(np.float32, copy=True)
    values = out[seen]
    out[seen] = np.where(values > 0, values / penalty, values * penalty)
    return out


def _keep_top_p(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Zero all but the smallest set of most likely tokens whose mass reaches top_p."""
    window = min(_NUCLEUS_WINDOW, probs.size)
    top = np.argpartition(probs, -window)[-window:]
    if probs[top].sum() < top_p:  # the nucleus is wider than the window: sort everything
        top = np.arange(probs.size)
    order = top[np.argsort(-probs[top], kind="stable")]
    cumulative = np.cumsum(probs[order])
    # keep tokens whose preceding mass is < top_p: the first token always survives
    keep = order[: int(np.searchsorted(cumulative, top_p, side="left")) + 1]
    out = np.zeros_like(probs)
    out[keep] = probs[keep]
    return out


def distribution(logits: np.ndarray, history: Sequence[int], config: SamplingConfig) -> np.ndarray:
    """The fully processed next-token distribution (float64, sums to 1) for one logits row.

    Greedy configs give the one-hot vector of the argmax, so callers can treat both modes alike.
    """
    logits = apply_repetition_penalty(logits, history, config.repetition_penalty)
    if config.greedy:
        probs = np.zeros(logits.shape[-1], np.float64)
        probs[int(np.argmax(logits))] = 1.0
        return probs
    scaled = logits.astype(np.float64) / config.temperature
    if 0 < config.top_k < scaled.size:
        kth = np.partition(scaled, -config.top_k)[-config.top_k]
        scaled = np.where(scaled >= kth, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if config.top_p < 1.0:
        probs = _keep_top_p(probs, config.top_p)
        probs /= probs.sum()
    return probs


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one token id from a distribution (inverse CDF with one uniform draw)."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), probs.size - 1))


class Constraint(Protocol):
    """Restricts which tokens may come next (a grammar): one sequence's position in it.

    Consulted before each pick, told each token that joins the sequence, and rolled back when
    speculative decoding drops tokens it had tried. Once the grammar is complete, ``allowed`` leaves
    only the end-of-sequence tokens.
    """

    def allowed(self) -> np.ndarray:
        """Boolean mask over the vocabulary (shape (vocab,)) of the tokens allowed next."""
        ...

    def consume(self, tokens: Sequence[int]) -> int:
        """Advance over the longest allowed prefix of ``tokens``; returns its length."""
        ...

    def rollback(self, n: int) -> None:
        """Undo the last ``n`` consumed tokens."""
        ...


def apply_constraint(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Logits with every disallowed token at -inf (a new array; rows beyond the mask count as disallowed)."""
    if allowed.size == logits.shape[-1]:
        return np.where(allowed, logits, np.float32(-np.inf))
    out = np.full(logits.shape, -np.inf, np.float32)
    n = min(allowed.size, logits.shape[-1])
    out[:n] = np.where(allowed[:n], logits[:n], -np.inf)
    return out


class Sampler:
    """Picks the next token from logits under one SamplingConfig and one random stream.

    With a ``constraint``, only the tokens it allows can be picked, and each pick advances it: a
    constrained Sampler is stateful and serves one sequence. Speculative decoding keeps it in step
    with the sequence: ``admissible`` truncates a draft before verification, ``distribution`` is the
    constrained p' at the current position, ``advance`` follows each verified token, and a drafter
    that drafts under the constraint ``admit``s then ``rollback``s its tokens.
    """

    def __init__(self, config: SamplingConfig, constraint: Constraint | None = None) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.constraint = constraint

    @property
    def picks_argmax(self) -> bool:
        """Whether ``pick`` is the row's argmax whatever the history (greedy, no penalty, no constraint): a step
        can then ask its session for each row's best token only (runtimes.base.forward_top)."""
        c = self.config
        return c.greedy and c.repetition_penalty == 1.0 and self.constraint is None

    def distribution(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        if self.constraint is not None:
            logits = apply_constraint(logits, self.constraint.allowed())
        return distribution(logits, history, self.config)

    def pick(self, logits: np.ndarray, history: Sequence[int]) -> int:
        if self.constraint is not None:
            token = self._pick(apply_constraint(logits, self.constraint.allowed()), history)
            self.advance([token])
            return token
        return self._pick(logits, history)

    def admissible(self, tokens: Sequence[int]) -> int:
        """How many leading ``tokens`` the constraint allows in a row (all without one); state unchanged."""
        if self.constraint is None or not tokens:
            return len(tokens)
        n = self.constraint.consume(tokens)
        self.constraint.rollback(n)
        return n

    def admit(self, token: int) -> bool:
        """Advance past ``token`` if the constraint allows it here (always without one); else False, unchanged."""
        return self.constraint is None or self.constraint.consume([token]) == 1

    def advance(self, tokens: Sequence[int]) -> None:
        """``tokens`` joined the sequence (each allowed where it stands): move the constraint past them."""
        if self.constraint is not None and self.constraint.consume(tokens) != len(tokens):
            raise EdgegenError(f"constrained decoding failed: the grammar refused a token of {list(tokens)}")

    def rollback(self, n: int) -> None:
        """Undo the last ``n`` tokens advanced or admitted (drafted tokens that were only tried)."""
        if self.constraint is not None and n:
            self.constraint.rollback(n)

    def _pick(self, logits: np.ndarray, history: Sequence[int]) -> int:
        if self.config.greedy:  # skip building the one-hot vector on the hot path
            return int(np.argmax(apply_repetition_penalty(logits, history, self.config.repetition_penalty)))
        return sample(distribution(logits, history, self.config), self.rng)
