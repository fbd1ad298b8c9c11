"""What every decode strategy implements and receives.

A strategy is a generator: it prefills, then yields lists of new token ids (one for AR, several
per target step for speculative). The caller owns stopping (EOS, stop strings, max tokens) and
simply stops iterating, so strategies contain no stop logic and never know the runtime.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

from edgegen.runtimes.base import Session
from edgegen.sampling import Sampler


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


class Strategy(Protocol):
    """A decoding algorithm. ``decode`` yields lists of accepted token ids, in order."""

    name: ClassVar[str]

    def decode(self, request: DecodeRequest) -> Iterator[list[int]]: ...


def prefill(request: DecodeRequest) -> np.ndarray:
    """Reset the target, run the prompt and return the last position's logits (vocab,)."""
    target = request.target
    target.reset()
    with request.counters.timing("prefill_s"):
        logits = target.forward(np.asarray(request.prompt_ids, np.int64), last_only=True)
    return logits[-1]


def step(request: DecodeRequest, token_ids: list[int]) -> np.ndarray:
    """One target forward after prefill, counted and timed; returns (len(token_ids), vocab) logits."""
    with request.counters.timing("target_s"):
        logits = request.target.forward(np.asarray(token_ids, np.int64))
    request.counters.target_steps += 1
    return logits
