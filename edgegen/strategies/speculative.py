"""Speculative decoding: a drafter proposes, the target verifies all proposals in one forward.

Greedy output is token-identical to AR greedy and sampled output has AR's distribution (see
verify.py). The target's KV cache is rolled back by ``trim`` after each rejection.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from edgegen.strategies.base import DecodeRequest, prefill, step
from edgegen.strategies.drafters import Drafter, PromptLookupDrafter
from edgegen.strategies.verify import verify


@dataclass
class DraftLength:
    """Adapts how many tokens to draft from the acceptance history.

    All accepted: draft 2 more next time (up to ``maximum``); otherwise one fewer (down to
    ``minimum``). A rejected long draft costs a wider target forward and drafter steps for nothing.
    """

    current: int = 4
    minimum: int = 1
    maximum: int = 10

    def update(self, proposed: int, accepted: int) -> None:
        if proposed == 0:
            return
        if accepted == proposed:
            self.current = min(self.maximum, self.current + 2)
        else:
            self.current = max(self.minimum, self.current - 1)


class Speculative:
    """Speculative decoding with any Drafter (a FastDraft model, prompt lookup, ...)."""

    name: ClassVar[str] = "speculative"

    def __init__(self, drafter: Drafter, num_draft_tokens: int = 4, max_draft_tokens: int = 10,
                 adaptive: bool = True) -> None:
        if num_draft_tokens < 1 or max_draft_tokens < num_draft_tokens:
            raise ValueError("need 1 <= num_draft_tokens <= max_draft_tokens")
        self.drafter = drafter
        # not adaptive: the length is pinned by making minimum == maximum == the initial length
        self.length = (DraftLength(num_draft_tokens, 1, max_draft_tokens) if adaptive
                       else DraftLength(num_draft_tokens, num_draft_tokens, num_draft_tokens))

    def decode(self, request: DecodeRequest) -> Iterator[list[int]]:
        sampler, counters, target = request.sampler, request.counters, request.target
        history = list(request.prompt_ids)
        logits = prefill(request)
        with counters.timing("draft_s"):
            self.drafter.begin(history)
        token = sampler.pick(logits, history)
        history.append(token)
        produced = 1
        yield [token]
        while True:
            # Never draft past what the caller wants or the cache holds.
            room = min(self.length.current, request.max_new_tokens - produced - 1,
                       target.max_length - len(history) - 1)
            with counters.timing("draft_s"):
                draft = self.drafter.propose(history, max(room, 0), sampler)
            cached = len(history) - 1  # the target has seen all but the newest token
            target_logits = step(request, [history[-1], *draft.tokens])
            new = verify(target_logits, draft.tokens, draft.q, history, sampler)
            accepted = len(new) - 1
            target.trim(cached + 1 + accepted)
            history.extend(new)
            counters.draft_proposed += len(draft.tokens)
            counters.draft_accepted += accepted
            self.length.update(len(draft.tokens), accepted)
            with counters.timing("draft_s"):
                self.drafter.update(history, accepted)
            produced += len(new)
            yield new


class PromptLookup(Speculative):
    """Speculative decoding drafted by prompt lookup alone: no drafter model, no training."""

    name: ClassVar[str] = "prompt-lookup"

    def __init__(self, num_draft_tokens: int = 8, max_draft_tokens: int = 16, max_ngram: int = 3,
                 adaptive: bool = True) -> None:
        super().__init__(PromptLookupDrafter(max_ngram), num_draft_tokens, max_draft_tokens, adaptive)
