"""Drafters: cheap proposers of the next few tokens, all behind one small protocol.

The speculative loop only calls ``begin``, ``propose`` and ``update``; it never asks which drafter it
holds (prompt lookup, a FastDraft model, or a combination).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgegen.runtimes.base import Session
from edgegen.sampling import Sampler, sample


@dataclass(frozen=True)
class Draft:
    tokens: list[int]
    q: np.ndarray | None = None  # (len(tokens), vocab) distributions the tokens were drawn from; None: deterministic
    kind: int = 0  # the evidence behind it (prompt lookup: the matched n-gram's length); acceptance is kept per kind

    def prefix(self, n: int) -> Draft:
        """The draft's first ``n`` tokens (itself when that is all of it)."""
        if n >= len(self.tokens):
            return self
        return Draft(self.tokens[:n], None if self.q is None else self.q[:n], self.kind)


class Drafter(Protocol):
    # Optional class attribute ``free`` (read with getattr, default False): proposing costs no forward, so the
    # speculative loop proposes first and sizes the draft by its kind (DraftLength keeps acceptance per kind).

    def begin(self, prompt_ids: list[int]) -> None:
        """A new sequence starts with these tokens."""
        ...

    def propose(self, context: list[int], max_tokens: int, sampler: Sampler) -> Draft:
        """Up to ``max_tokens`` tokens to follow ``context`` (possibly none)."""
        ...

    def update(self, context: list[int], accepted: int) -> None:
        """The target accepted ``accepted`` draft tokens; ``context`` is the sequence now."""
        ...


class PromptLookupDrafter:
    """Copies what followed the most recent earlier occurrence of the context's last n tokens.

    Training-free and deterministic (q is one-hot); strong where output repeats input (code edits,
    summaries, RAG). Tries n = max_ngram down to min_ngram; the draft's kind is the n that matched. An index
    from each n-gram to where it last started grows with the context, so a step costs the new tokens, not a
    scan of the whole context.
    """

    free = True  # a dictionary look-up: the loop proposes before it sizes the draft (Drafter)

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self._seen: list[int] = []  # the context indexed so far
        self._last_start: dict[tuple[int, ...], int] = {}  # n-gram -> its latest start with a token after it

    def begin(self, prompt_ids: list[int]) -> None:
        self._seen, self._last_start = [], {}

    def _index(self, context: list[int]) -> None:
        """Index every n-gram of ``context[:-1]`` (those with a token after them) not indexed yet."""
        if context[: len(self._seen)] != self._seen:  # not a continuation of what was indexed: start over
            self.begin(context)
        done = len(self._seen)
        for end in range(max(done, 1), len(context)):  # n-grams ending at end - 1, followed by context[end]
            for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
                self._last_start[tuple(context[end - n : end])] = end - n
        self._seen = list(context)

    def propose(self, context: list[int], max_tokens: int, sampler: Sampler) -> Draft:
        self._index(context)
        for n in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            start = self._last_start.get(tuple(context[-n:]))
            if start is not None:
                return Draft(context[start + n : start + n + max_tokens], kind=n)
        return Draft([])

    def update(self, context: list[int], accepted: int) -> None:
        pass


class ModelDrafter:
    """A small language model (FastDraft) that shares the target's tokenizer, run on any Session.

    Its KV cache follows the accepted sequence: after each verification it is trimmed to the longest
    prefix it shares with the new context, and the next proposal feeds only what it has not seen.

    ``head_vocab`` (a reduced drafter head: its token i is the target's ``head_vocab[i]``): context ids
    are renumbered on the way in (an id outside it feeds token 0's row, the most frequent token by the
    pack's ordering) and logits are spread back over the target's ``target_vocab`` on the way out, so
    proposals and their distributions q are always in the target's ids.
    """

    def __init__(self, session: Session, confidence: float = 0.0, head_vocab: np.ndarray | None = None,
                 target_vocab: int | None = None) -> None:
        self.session = session
        self.confidence = confidence  # stop drafting when the drafter's top probability falls below
        self._fed: list[int] = []  # tokens in the drafter's cache, in order (target ids)
        self._head = None if head_vocab is None else np.asarray(head_vocab, dtype=np.int64)
        if self._head is not None:
            self._to_draft = np.zeros(int(target_vocab or self._head.max() + 1), dtype=np.int64)
            self._to_draft[self._head] = np.arange(len(self._head))
            self._full = np.full(len(self._to_draft), -np.inf, dtype=np.float32)

    def begin(self, prompt_ids: list[int]) -> None:
        self.session.reset()
        self._fed = []

    def _feed(self, tokens: list[int]) -> np.ndarray:
        """The drafter's last logits row after ``tokens``, over its own head (the target's ids without one)."""
        ids = np.asarray(tokens, np.int64)
        logits = self.session.forward(ids if self._head is None else self._to_draft[ids], last_only=True)
        self._fed.extend(tokens)
        return logits[-1]

    def _spread(self, row: np.ndarray) -> np.ndarray:
        """A head row over the target's vocabulary: tokens the head lacks get probability 0."""
        if self._head is None:
            return row
        full = self._full.copy()
        full[self._head] = row
        return full

    def _argmax(self, row: np.ndarray) -> int:
        """The target id ``np.argmax`` of the spread row gives (the lowest id among equal maxima), from the head
        row itself: a greedy draft token needs no target-vocabulary row (262k floats for Gemma)."""
        if self._head is None:
            return int(np.argmax(row))
        best = row.max()
        tied = self._head[row == best]
        return int(tied.min()) if tied.size else int(np.argmax(self._spread(row)))  # NaN: as the spread row does

    def propose(self, context: list[int], max_tokens: int, sampler: Sampler) -> Draft:
        if max_tokens <= 0:
            return Draft([])
        row = self._feed(context[len(self._fed) :])
        tokens: list[int] = []
        rows: list[np.ndarray] = []
        while True:
            if sampler.picks_argmax:  # q is one-hot at the argmax: neither it nor a full row is built
                token, q = self._argmax(row), None
            else:
                q = sampler.distribution(self._spread(row), context + tokens)
                token = int(np.argmax(q)) if sampler.config.greedy else sample(q, sampler.rng)
            if tokens and (1.0 if q is None else q.max()) < self.confidence:
                break  # unsure: a short draft wastes less target work than a rejected long one
            if not sampler.admit(token):
                break  # under a constraint the drafter's head may hold none of the allowed tokens
            tokens.append(token)
            if q is not None:
                rows.append(q)
            if len(tokens) == max_tokens or len(context) + len(tokens) >= self.session.max_length:
                break
            row = self._feed([token])
        sampler.rollback(len(tokens))  # drafted tokens join the sequence only once verified
        return Draft(tokens, None if sampler.config.greedy else np.stack(rows))

    def update(self, context: list[int], accepted: int) -> None:
        n = min(len(self._fed), len(context))
        differ = np.flatnonzero(np.asarray(self._fed[:n]) != np.asarray(context[:n]))
        keep = int(differ[0]) if differ.size else n
        keep = min(keep, len(context) - 1)  # the newest token is fed again: the next proposal starts from its row
        self.session.trim(keep)
        del self._fed[keep:]


class LookupThenModel:
    """Prompt lookup where the context repeats itself, the draft model everywhere else.

    A lookup draft costs no drafter forwards, so it is tried first; the model drafts only when the
    context has no match. Its cache still follows the accepted sequence (``update`` trims it).
    """

    def __init__(self, model: ModelDrafter, lookup: PromptLookupDrafter | None = None) -> None:
        self.model = model
        self.lookup = lookup or PromptLookupDrafter()

    def begin(self, prompt_ids: list[int]) -> None:
        self.lookup.begin(prompt_ids)
        self.model.begin(prompt_ids)

    def propose(self, context: list[int], max_tokens: int, sampler: Sampler) -> Draft:
        draft = self.lookup.propose(context, max_tokens, sampler)
        return draft if draft.tokens else self.model.propose(context, max_tokens, sampler)

    def update(self, context: list[int], accepted: int) -> None:
        self.lookup.update(context, accepted)
        self.model.update(context, accepted)
