"""Speculative decoding: a drafter proposes, the target verifies all proposals in one forward.

Greedy output is token-identical to AR greedy and sampled output has AR's distribution (see
verify.py). The target's KV cache is rolled back by ``trim`` after each rejection.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.runtimes.base import top_tokens
from edgegen.strategies.base import DecodeRequest, Strategy, prefill, row_noise, step, step_limit, step_top
from edgegen.strategies.draft_length import DraftLength
from edgegen.strategies.drafters import Draft, Drafter, LookupThenModel, ModelDrafter, PromptLookupDrafter
from edgegen.strategies.verify import verify, verify_argmax, within_row_noise


def verified_step(request: DecodeRequest, history: list[int], draft: Draft, extra: Sequence[int] = (),
                  hidden: bool = False) -> tuple[list[int], np.ndarray, float]:
    """One target forward over [newest token] + draft + ``extra``, the draft verified against its rows.

    ``history`` (every token so far; the target has cached all but the newest) is extended by the
    accepted draft prefix and one target token (correction or bonus). The target's cache is rolled
    back to that accepted prefix, dropping rejected and ``extra`` rows. Returns (new tokens, the
    ``extra`` rows' logits, the forward's seconds). On a session whose later rows carry noise
    (Session.row_noise), greedy stops before a token such a row decided within its noise: the new tokens
    then end with a draft token, and the next call's first row decides what follows, as AR's would.

    Under a constraint the draft is first cut before its first token the grammar refuses: the target
    would reject that token for sure (p'(x) = 0), and for a deterministic draft the residual it would
    draw from is p' itself, what the bonus draw after the cut draft uses (a sampled draft is drawn
    under the constraint, so it is never cut). ``hidden``: the target keeps the forward's final hidden
    states (row i: after [newest token] + draft[:i]; Session.hidden_states).
    """
    cached = request.target.position
    draft = draft.prefix(request.sampler.admissible(draft.tokens))
    n = len(draft.tokens)
    greedy = draft.q is None and request.sampler.picks_argmax
    noise = row_noise(request.target) if greedy else 0.0  # AR's tokens from rows that may differ a little
    if greedy and not extra:  # only each row's best token is needed (and the second, for its margin)
        top, seconds = step_top(request, [history[-1], *draft.tokens], hidden, k=2 if noise else 1)
        new, extra_rows = verify_argmax(top.argmax, draft.tokens), np.empty((0, 0), np.float32)
    else:
        logits, seconds = step(request, [history[-1], *draft.tokens, *extra], hidden)
        new, extra_rows = verify(logits[: n + 1], draft.tokens, draft.q, history, request.sampler), logits[n + 1 :]
        top = top_tokens(logits[: n + 1], 2) if noise else None
    accepted = len(new) - 1  # draft tokens taken; the last is the target's (correction or bonus)
    if noise:  # a cut keeps only draft tokens, up to the accepted ones
        new = within_row_noise(new, top.logits[:, 0] - top.logits[:, 1], noise)
        accepted = min(accepted, len(new))
    # the cache keeps all but the newest token: a cut new ends with a draft token the forward already cached
    request.target.trim(cached + len(new))
    history.extend(new)
    request.counters.draft_proposed += n
    request.counters.draft_accepted += accepted
    return new, extra_rows, seconds


class Speculative(Strategy):
    """Speculative decoding with any Drafter (a FastDraft model, prompt lookup, ...)."""

    name: ClassVar[str] = "speculative"
    takes_constraint: ClassVar[bool] = True
    # The target keeps its final hidden states at prefill and at every verification, before the drafter's
    # begin and update: a drafter built on the target's features (strategies.hydra) reads them there.
    reads_hidden: ClassVar[bool] = False

    @classmethod
    def build(cls, drafter: Drafter | None, **options: Any) -> Strategy:
        """Drafted by the loaded draft model, with prompt lookup first unless ``lookup=False``."""
        if drafter is None:
            raise EdgegenError("strategy 'speculative' needs a draft model (--draft DIR); "
                               "'prompt-lookup' needs none")
        if options.pop("lookup", True) and isinstance(drafter, ModelDrafter):
            drafter = LookupThenModel(drafter)  # free drafts where the context repeats
        return cls(drafter, **options)

    def __init__(self, drafter: Drafter, num_draft_tokens: int = 4, max_draft_tokens: int = 10,
                 adaptive: bool = True) -> None:
        if num_draft_tokens < 1 or max_draft_tokens < num_draft_tokens:
            raise ValueError("need 1 <= num_draft_tokens <= max_draft_tokens")
        self.drafter = drafter
        self._free = getattr(drafter, "free", False)
        # not adaptive: every step drafts num_draft_tokens (fewer only where the drafter has no more)
        self.length = DraftLength(num_draft_tokens, max_draft_tokens if adaptive else num_draft_tokens, adaptive)

    def decode(self, request: DecodeRequest) -> Iterator[list[int]]:
        sampler, counters, target = request.sampler, request.counters, request.target
        history = list(request.prompt_ids)
        logits = prefill(request, self.reads_hidden)
        with counters.timing("draft_s"):
            self.drafter.begin(history)
        token = sampler.pick(logits, history)
        history.append(token)
        produced = 1
        yield [token]
        while True:
            # Never draft past what the caller wants, the cache holds or one call takes (static NPU graphs).
            room = max(0, min(request.max_new_tokens - produced - 1, target.max_length - len(history) - 1,
                              step_limit(target) - 1))
            started = counters.draft_s
            with counters.timing("draft_s"):
                if self._free:  # propose first: the draft's kind decides how much of it pays
                    draft = self.drafter.propose(history, min(room, self.length.maximum), sampler)
                    kind = draft.kind
                    draft = draft.prefix(self.length.choose(len(draft.tokens), kind))
                else:  # sized before the drafter runs: one acceptance for all its drafts
                    kind, n = 0, self.length.choose(room)
                    draft = self.drafter.propose(history, n, sampler) if n else Draft([])
            drafted_s = counters.draft_s - started
            new, _, forward_s = verified_step(request, history, draft, hidden=self.reads_hidden)
            accepted = len(new) - 1
            self.length.update(len(draft.tokens), accepted, len(draft.tokens) + 1, forward_s, drafted_s, kind)
            with counters.timing("draft_s"):
                self.drafter.update(history, accepted)
            produced += len(new)
            yield new


class PromptLookup(Speculative):
    """Speculative decoding drafted by prompt lookup alone: no drafter model, no training."""

    name: ClassVar[str] = "prompt-lookup"

    @classmethod
    def build(cls, drafter: Drafter | None, **options: Any) -> Strategy:
        return cls(**options)  # drafts from the context alone: a loaded draft model is not used

    def __init__(self, num_draft_tokens: int = 8, max_draft_tokens: int = 16, max_ngram: int = 3,
                 adaptive: bool = True) -> None:
        super().__init__(PromptLookupDrafter(max_ngram), num_draft_tokens, max_draft_tokens, adaptive)
