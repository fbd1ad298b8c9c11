"""Lexical Unit Decoding (LREC-COLING 2024): a fine-tuned model decodes a confident multi-token unit per step.

Each step feeds the tokens not yet in the cache followed by m placeholder ids P_1..P_m (the model's manifest
records them in `extras["lud"]`). The last real row gives the unit's first token as in AR; P_j's row predicts
the unit's (j+1)-th token. Adaptive span acceptance keeps the leading placeholder predictions whose
probability exceeds `threshold`; repetition control ends the unit at a token that would close a block of 1-8
tokens said twice in a row ("x x", "a b a b": the typical failure of parallel placeholders, which otherwise feed
a loop they then predict confidently). The placeholders' cache entries are dropped after every step.

`verified=True` feeds the unit's tokens as a draft in the next step instead of trusting them: its rows check
each one against the model's own next-token choice (edgegen.strategies.verify), so greedy output equals AR
greedy of the same model and sampling keeps AR's distribution; the gain is then the verified run per step.
`threshold >= 1` accepts nothing past the first token and appends no placeholders: plain AR.

`adaptive=True` picks each step's number of placeholders (0 included) like speculative decoding picks its
draft length (draft_length.DraftLength): from the decayed rate at which placeholder tokens join units and the
measured cost of a forward per row count. A placeholder row costs real time on a CPU (ONNX Runtime: a 1-row
forward is its fast path), so placeholders are only appended while they pay for themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.runtimes.base import Session
from edgegen.sampling import Sampler
from edgegen.strategies.base import DecodeRequest, Strategy, prefill, step, step_limit
from edgegen.strategies.draft_length import DraftLength
from edgegen.strategies.drafters import Draft
from edgegen.strategies.speculative import verified_step


def placeholder_ids(target: Session) -> tuple[list[int], float]:
    """(placeholder ids, default threshold) of a LUD-tuned model; a clear error for any other model."""
    extras = getattr(target.manifest, "extras", {}) or {}
    lud = extras.get("lud")
    if not isinstance(lud, dict) or not lud.get("placeholder_ids"):
        raise EdgegenError(f"model '{target.manifest.name}' is not LUD-tuned (no extras.lud in its edgegen.json): "
                           "use model 'default-lud' or a folder from 'edgegen lud export'")
    return [int(i) for i in lud["placeholder_ids"]], float(lud.get("default_threshold", 0.7))


def repeats(tokens: list[int], longest: int = 8) -> bool:
    """True when ``tokens`` ends with a block of 1..``longest`` tokens said twice in a row."""
    return any(tokens[-p:] == tokens[-2 * p:-p] for p in range(1, min(longest, len(tokens) // 2) + 1))


class Lexical(Strategy):
    """LUD decoding on a LUD-tuned model: `threshold` in [0, 1] (None: the model's default), `span` = m."""

    name: ClassVar[str] = "lexical"
    default_model: ClassVar[str | None] = "default-lud"  # the base model has no trained placeholders

    def __init__(self, threshold: float | None = None, span: int | None = None, verified: bool = False,
                 repetition_control: bool = True, adaptive: bool = True) -> None:
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        if span is not None and span < 1:
            raise ValueError(f"span must be >= 1 placeholder, got {span}")
        self.threshold, self.span, self.verified = threshold, span, verified
        self.repetition_control, self.adaptive = repetition_control, adaptive

    def _settings(self, target: Session) -> tuple[list[int], float]:
        ids, default = placeholder_ids(target)
        span = len(ids) if self.span is None else self.span
        if span > len(ids):
            raise EdgegenError(f"span {span} exceeds the {len(ids)} placeholders model '{target.manifest.name}' "
                               "was trained with")
        return ids[:span], default if self.threshold is None else self.threshold

    def unit(self, rows: np.ndarray, context: list[int], sampler: Sampler, threshold: float,
              room: int) -> list[int]:
        """Adaptive span acceptance over the placeholder rows: the leading confident, non-repeating tokens.

        ``context`` is every token so far (prompt and output, ending with the unit's first token)."""
        unit: list[int] = []
        recent = context[-16:]  # all that repetition control looks at
        for row in rows[:room]:
            # the model's own probabilities (softmax at temperature 1, no sampling transforms), once per row
            weights = np.exp(row.astype(np.float64) - float(row.max()))
            total = float(weights.sum())
            if 1.0 / total <= threshold:
                break  # even the top token is not confident enough: skip the full sampling transforms
            ctx = context + unit
            # A verified draft must be deterministic (q one-hot); an unverified unit follows the sampler.
            token = int(np.argmax(sampler.distribution(row, ctx))) if self.verified else sampler.pick(row, ctx)
            if weights[token] / total <= threshold or (self.repetition_control and repeats(recent + unit + [token])):
                break
            unit.append(token)
        return unit

    def decode(self, request: DecodeRequest) -> Iterator[list[int]]:
        pids, threshold = self._settings(request.target)
        history = list(request.prompt_ids)
        token = request.sampler.pick(prefill(request), history)
        history.append(token)
        yield [token]
        length = DraftLength(len(pids), len(pids), self.adaptive)
        steps = self._verified_steps if self.verified else self._unverified_steps
        yield from steps(request, history, pids, threshold, length)

    def _placeholders(self, request: DecodeRequest, length: DraftLength, pids: list[int], threshold: float,
                      fed: int) -> list[int]:
        """The placeholders to append after ``fed`` real rows: as many as pay for themselves and fit the cache."""
        if threshold >= 1.0:
            return []
        target = request.target
        room = min(target.max_length - target.position, step_limit(target)) - fed  # one call on a static graph
        return pids[: length.choose(max(0, min(len(pids), room)))]

    def _verified_steps(self, request: DecodeRequest, history: list[int], pids: list[int], threshold: float,
                        length: DraftLength) -> Iterator[list[int]]:
        """Each step verifies the previous unit as a draft (speculative's verification) and proposes the next."""
        unit: list[int] = []
        while True:
            extra = self._placeholders(request, length, pids, threshold, 1 + len(unit))
            new, rows, forward_s = verified_step(request, history, Draft(unit), extra)
            accepted = len(new) - 1
            length.update(len(unit), accepted, 1 + len(unit) + len(extra), forward_s, 0.0)
            # the placeholders followed the unit: after a rejection they predicted a continuation not taken
            room = request.max_new_tokens - (len(history) - len(request.prompt_ids)) if accepted == len(unit) else 0
            # the unit is the next step's draft: with its token before it, one call on a static graph
            unit = self.unit(rows, history, request.sampler, threshold, min(room, step_limit(request.target) - 1))
            yield new

    def _unverified_steps(self, request: DecodeRequest, history: list[int], pids: list[int], threshold: float,
                          length: DraftLength) -> Iterator[list[int]]:
        """Each step trusts the confident unit its placeholder rows predict."""
        target, sampler, counters = request.target, request.sampler, request.counters
        pending = history[-1:]  # real tokens not yet in the cache
        while True:
            base, fed = target.position, len(pending)
            extra = self._placeholders(request, length, pids, threshold, fed)
            out, forward_s = step(request, pending + extra)
            history.append(sampler.pick(out[fed - 1], history))
            room = request.max_new_tokens - (len(history) - len(request.prompt_ids))
            # the unit is fed after its first token next step: one call on a static graph
            unit = self.unit(out[fed:], history, sampler, threshold, min(room, step_limit(target) - 1))
            length.update(len(extra), len(unit), fed + len(extra), forward_s, 0.0)
            counters.draft_proposed += len(extra)  # placeholders offered, and how many of them joined the unit
            counters.draft_accepted += len(unit)
            target.trim(base + fed)  # drop the placeholders
            pending = history[-1:] + unit
            history.extend(unit)
            yield pending
