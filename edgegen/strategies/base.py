"""What every decode strategy implements and receives.

A strategy is a generator: it prefills, then yields lists of new token ids (one for AR, several
per target step for speculative). The caller owns stopping (EOS, stop strings, max tokens) and
simply stops iterating, so strategies contain no stop logic and never know the runtime.

A multi-draft strategy (superposed) keeps k sequences whose ranking can change until the end: it
yields ``[]`` after each step, then the best draft's tokens once, and exposes all k as ``drafts``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.runtimes.base import Session, TopTokens, finite_rows, forward_top
from edgegen.sampling import Sampler
from edgegen.strategies.drafters import Drafter


@dataclass
class DecodeCounters:
    """Mutable tallies a strategy updates while it runs; frozen into GenerationStats at the end."""

    prefill_s: float = 0.0
    target_s: float = 0.0  # target forwards after prefill
    draft_s: float = 0.0  # drafter work (speculative strategies)
    target_steps: int = 0  # target forwards after prefill
    draft_proposed: int = 0
    draft_accepted: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timing(self, attribute: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, attribute, getattr(self, attribute) + time.perf_counter() - start)


@dataclass
class DecodeRequest:
    """Everything a strategy needs for one generation."""

    target: Session
    prompt_ids: list[int]
    sampler: Sampler
    max_new_tokens: int
    counters: DecodeCounters = field(default_factory=DecodeCounters)
    eos_token_ids: frozenset[int] = frozenset()  # empty when EOS is ignored; multi-draft strategies finish on it
    model_folder: Path | None = None  # the exported model, for strategies with side data (an n-gram store)


class Strategy(Protocol):
    """A decoding algorithm. ``decode`` yields lists of accepted token ids, in order.

    The class attributes say what the strategy needs from the caller, so the API and CLI never ask
    for a strategy by name. Strategies subclass this protocol to inherit the defaults.
    """

    name: ClassVar[str]
    multi_draft: ClassVar[bool] = False  # returns several ranked drafts (a MultiDraftStrategy)
    # feeds input embeddings (the session must be loaded for them); an instance may need them where its class
    # might not (superposed decoding with one draft feeds token ids)
    needs_embeddings: bool = False
    default_model: ClassVar[str | None] = None  # the model it needs when the caller names none
    takes_constraint: ClassVar[bool] = False  # keeps a sampling constraint (a grammar) in step with its output

    @classmethod
    def build(cls, drafter: Drafter | None, **options: Any) -> Strategy:
        """The strategy with these options; ``drafter`` is the loaded draft model's (None without one)."""
        return cls(**options)

    def decode(self, request: DecodeRequest) -> Iterator[list[int]]: ...


@dataclass(frozen=True)
class RankedDraft:
    """One of the drafts a multi-draft strategy returns."""

    tokens: list[int]  # generated tokens, ending with the EOS id when the draft finished on one
    score: float  # the strategy's ranking score, higher is better


@runtime_checkable
class MultiDraftStrategy(Protocol):
    """A strategy that produces several drafts: ``drafts`` (best first) is set before its last yield."""

    name: ClassVar[str]
    drafts: list[RankedDraft]

    def decode(self, request: DecodeRequest) -> Iterator[list[int]]: ...


def prefill(request: DecodeRequest, hidden: bool = False) -> np.ndarray:
    """Run the prompt on the target and return the last position's logits (vocab,).

    The cache keeps what it already holds of the prompt (the previous chat turn, a repeated system
    prompt) and only the rest is forwarded: at least the last token, whose logits start the decoding.
    ``hidden``: the session also keeps that row's final hidden state (Session.hidden_states).
    """
    target, ids = request.target, request.prompt_ids
    keep = min(target.common_prefix(ids), len(ids) - 1)
    if keep:
        target.trim(keep)
    else:
        target.reset()
    rest = np.asarray(ids[keep:], np.int64)
    chunk = prefill_chunk(target)
    with request.counters.timing("prefill_s"):
        for start in range(0, len(rest) - chunk, chunk):  # all but the last chunk: only their cache entries matter
            target.forward(rest[start:start + chunk], last_only=True)
        # hidden is passed only when asked: a Session without hidden states (a test fake) runs every other strategy
        logits = target.forward(rest[(len(rest) - 1) // chunk * chunk:], last_only=True, **_asked(hidden))
    return check_finite(logits[-1])  # a corrupt model stops before its first token


def _asked(hidden: bool) -> dict[str, bool]:
    return {"hidden": True} if hidden else {}


def check_finite(logits: np.ndarray) -> np.ndarray:
    """``logits`` unchanged if every value is finite; else the EdgegenError that stops generation.

    NaN or inf logits come from corrupt weights (a flipped byte, a NaN quantization scale) or a model
    quantized too coarsely; decoding on would silently emit token 0 every step.
    """
    if not finite_rows(np.atleast_2d(logits)).all():
        raise _not_finite()
    return logits


def _not_finite() -> EdgegenError:
    return EdgegenError("the model produced NaN or infinite logits: its weights are likely corrupt or badly "
                        "quantized (`edgegen verify MODEL` checks its files; re-export it, or quantize it less)")


PREFILL_CHUNK = 512  # prompt tokens per prefill forward: bounds the attention scores' memory on long prompts


def prefill_chunk(target: Session) -> int:
    """Prompt tokens one prefill forward takes: ``PREFILL_CHUNK``, unless the session says otherwise
    (Session.prefill_chunk: a static NPU prefill graph needs the whole prompt in one call; OpenVINO's paged CPU path
    prefills 2048 at a time). 512-token chunks cost no time on ONNX Runtime (docs/performance.md) and keep a
    8k-token prompt's attention scores to a 512-row slice."""
    return getattr(target, "prefill_chunk", PREFILL_CHUNK)


def step_limit(target: Session) -> int:
    """Tokens one forward after the prompt runs in one call: a static NPU graph's generation step length
    (Session.max_step; a longer forward still works, in several calls), unbounded elsewhere."""
    return getattr(target, "max_step", sys.maxsize)


def row_noise(target: Session) -> float:
    """How far a logit of a forward's row after its first may lie from the same position computed as a call's
    first row, as AR computes every token (Session.row_noise: a static NPU graph's rows move with their place in
    the call); 0 where every row is computed alike (the CPU backends)."""
    return getattr(target, "row_noise", 0.0)


def step(request: DecodeRequest, token_ids: list[int], hidden: bool = False) -> tuple[np.ndarray, float]:
    """One target forward after prefill, counted and timed: its (len(token_ids), vocab) logits and seconds.
    ``hidden``: the session also keeps the rows' final hidden states (Session.hidden_states)."""
    start = time.perf_counter()
    logits = request.target.forward(np.asarray(token_ids, np.int64), **_asked(hidden))
    return _counted(request, logits, time.perf_counter() - start)


def step_top(request: DecodeRequest, token_ids: list[int], hidden: bool = False,
             k: int = 1) -> tuple[TopTokens, float]:
    """Like ``step`` when the sampler's pick is the argmax (Sampler.picks_argmax): only each row's ``k`` best
    tokens come back, chosen on the session's device where it can (runtimes.base.forward_top), and seconds."""
    start = time.perf_counter()
    top = forward_top(request.target, np.asarray(token_ids, np.int64), k, hidden=hidden)
    seconds = _count(request, time.perf_counter() - start)
    if not top.finite.all():
        raise _not_finite()
    return top, seconds


def step_embeddings(request: DecodeRequest, embeddings: np.ndarray) -> tuple[np.ndarray, float]:
    """Like ``step`` for input embeddings (n, hidden) float32 instead of token ids: (n, vocab) logits, seconds."""
    start = time.perf_counter()
    logits = request.target.forward_embeddings(embeddings)  # type: ignore[attr-defined]
    return _counted(request, logits, time.perf_counter() - start)


def _counted(request: DecodeRequest, logits: np.ndarray, seconds: float) -> tuple[np.ndarray, float]:
    return check_finite(logits), _count(request, seconds)


def _count(request: DecodeRequest, seconds: float) -> float:
    """Record one target forward of ``seconds``; returns them."""
    request.counters.target_s += seconds
    request.counters.target_steps += 1
    return seconds
