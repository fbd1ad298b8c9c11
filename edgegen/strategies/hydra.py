"""Hydra decoding (Ankner et al. 2024): draft heads on the target's own final hidden state, verified as
speculative decoding.

The target's verification forward also keeps the final hidden state of its rows (Session.forward with
hidden=True: the LM head's input, fetched only for this strategy). The row whose logits chose the newest
token, with that token, feeds the heads, which draft a chain: head i proposes the token i + 1 places past the
newest one, seeing the tokens drafted before it. The chain is verified like any draft (verify.py), so greedy
output is AR's and sampling keeps AR's distribution (sampled drafts are drawn from the heads' processed
distributions q, which verification divides by).

Prompt lookup drafts beside the heads. Greedy takes the longer of the two drafts (both are deterministic, so
either is verified exactly; the heads on a tie), and does not run the heads when lookup's draft is already as
long as theirs could be; sampling takes lookup where the context repeats and the heads elsewhere, a choice
made before the heads draw: choosing after seeing a sampled chain would skew its tokens away from q.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from threadpoolctl import ThreadpoolController

from edgegen.errors import EdgegenError
from edgegen.runtimes.base import Session
from edgegen.sampling import Sampler, sample
from edgegen.strategies.base import DecodeRequest, Strategy
from edgegen.strategies.drafters import Draft, Drafter, PromptLookupDrafter
from edgegen.strategies.speculative import Speculative

# A chain stops at the first head whose top probability is below this (0: never), so an unsure head drafts
# nothing and prompt lookup's draft, when longer, is verified instead. Chosen on the shipped heads against the
# row costs of a CPU, where a rejected row costs 12-30% of a step (docs/hydra.md, "Run 11").
DEFAULT_CONFIDENCE = 0.7


class DraftHeads(Protocol):
    """Hydra heads as the drafter runs them (edgegen.heads.HydraHeads)."""

    num_heads: int
    vocab: np.ndarray  # (V,) int64: head output index -> target token id
    vocab_size: int  # the target's

    def head(self, k: int, state: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Head ``k`` (0-based): ``state`` (n, d) (the target's hidden state for k = 0), ``tokens`` (n,) the
        token each row just took; returns (the next state (n, d), logits over ``vocab`` (n, V))."""
        ...


class HydraDrafter:
    """A Drafter over draft heads that read the target session's final hidden states.

    It runs under a strategy whose loop keeps them (``Speculative.reads_hidden``): ``begin`` reads the
    prefill's last row, ``update`` the verification row that chose the newest token. Each head's logits go
    through the sampler (penalty, temperature, top-k/p, constraint) like the target's, so a sampled draft
    is drawn from the q that verification divides by. ``confidence``: stop the chain at a head whose own top
    probability is below it (head 1 included: then no draft). ``proposed`` / ``accepted``: per head, over
    the heads' drafts the loop verified.
    """

    def __init__(self, heads: DraftHeads, target: Session, confidence: float = DEFAULT_CONFIDENCE) -> None:
        self.heads, self.target, self.confidence = heads, target, confidence
        self.proposed = np.zeros(heads.num_heads, np.int64)
        self.accepted = np.zeros(heads.num_heads, np.int64)
        self._full = np.full(heads.vocab_size, -np.inf, np.float32)  # target-vocabulary logits, -inf off the heads'
        self._hidden: np.ndarray | None = None
        self._drafted = 0  # length of the heads' draft now being verified (0: none)

    def begin(self, prompt_ids: list[int]) -> None:
        self._hidden = self.target.hidden_states()[-1]
        self._drafted = 0

    def propose(self, context: list[int], max_tokens: int, sampler: Sampler) -> Draft:
        assert self._hidden is not None, "begin() first"
        heads, greedy = self.heads, sampler.config.greedy
        plain = greedy and sampler.constraint is None and sampler.config.repetition_penalty == 1.0
        state, token = self._hidden[None], np.array([context[-1]])
        tokens: list[int] = []
        rows: list[np.ndarray] = []
        with _one_blas_thread():
            for k in range(min(max_tokens, heads.num_heads)):
                state, logits = heads.head(k, state, token)
                row = logits[0]
                best = int(np.argmax(row))
                # the head's own top probability (softmax at temperature 1) says how sure it is
                if self.confidence and 1.0 / float(np.exp(row - row[best]).sum()) < self.confidence:
                    break  # unsure: a short draft (none at all) wastes less target work than a rejected long one
                if plain:  # the argmax over the heads' own vocabulary: no full-vocabulary row needed
                    choice = int(heads.vocab[best])
                else:
                    full = self._full.copy()
                    full[heads.vocab] = row
                    q = sampler.distribution(full, context + tokens)
                    choice = int(np.argmax(q)) if greedy else sample(q, sampler.rng)
                if not sampler.admit(choice):
                    break  # under a constraint the heads may hold none of the allowed tokens
                tokens.append(choice)
                if not greedy:
                    rows.append(q)
                token = np.array([choice])
        sampler.rollback(len(tokens))  # drafted tokens join the sequence only once verified
        self._drafted = len(tokens)
        return Draft(tokens, np.stack(rows) if rows else None)

    def discard(self) -> None:
        """The last proposal was not used: the verification that follows counts for no head."""
        self._drafted = 0

    def update(self, context: list[int], accepted: int) -> None:
        self._hidden = self.target.hidden_states()[accepted]  # the row that chose context[-1]
        self.proposed[: self._drafted] += 1
        self.accepted[: min(accepted, self._drafted)] += 1
        self._drafted = 0


@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def _one_blas_thread() -> Any:
    """A context in which NumPy's BLAS runs one thread. A head is a few one-row products, bound by memory:
    more threads only synchronise, and wait for any core another process holds (docs/hydra.md: 4-5x the
    time on a loaded 2-core machine)."""
    return _blas().limit(limits=1, user_api="blas")


class LookupOrHydra:
    """Prompt lookup beside the heads (see the module docstring for which draft is used)."""

    def __init__(self, hydra: HydraDrafter, lookup: PromptLookupDrafter | None = None) -> None:
        self.hydra = hydra
        self.lookup = lookup or PromptLookupDrafter()

    def begin(self, prompt_ids: list[int]) -> None:
        self.lookup.begin(prompt_ids)
        self.hydra.begin(prompt_ids)

    def propose(self, context: list[int], max_tokens: int, sampler: Sampler) -> Draft:
        copied = self.lookup.propose(context, max_tokens, sampler)
        longest = min(max_tokens, self.hydra.heads.num_heads)  # the heads' draft is never longer than this
        if copied.tokens and (not sampler.config.greedy or len(copied.tokens) >= longest):
            return copied  # sampling: lookup wherever it matches; greedy: the heads could not draft longer
        drafted = self.hydra.propose(context, max_tokens, sampler)
        if len(copied.tokens) > len(drafted.tokens):
            self.hydra.discard()
            return copied
        return drafted

    def update(self, context: list[int], accepted: int) -> None:
        self.lookup.update(context, accepted)
        self.hydra.update(context, accepted)


class Hydra(Speculative):
    """Speculative decoding drafted by Hydra heads on the target's hidden state (plus prompt lookup).

    heads: a heads file (safetensors); None: the heads shipped for the default model. lookup: prompt lookup
    beside the heads. confidence: stop a chain at a head less sure than this.
    """

    name: ClassVar[str] = "hydra"
    reads_hidden: ClassVar[bool] = True

    @classmethod
    def build(cls, drafter: Drafter | None, **options: Any) -> Strategy:
        return cls(**options)  # its drafter reads the target: it is made per generation (decode)

    def __init__(self, heads: str | Path | DraftHeads | None = None, lookup: bool = True,
                 confidence: float = DEFAULT_CONFIDENCE,
                 num_draft_tokens: int = 4, max_draft_tokens: int = 10, adaptive: bool = True) -> None:
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be within [0, 1], got {confidence}")
        super().__init__(PromptLookupDrafter(), num_draft_tokens, max_draft_tokens, adaptive)
        self.heads, self.lookup, self.confidence = heads, lookup, confidence
        self.hydra: HydraDrafter | None = None

    def decode(self, request: DecodeRequest) -> Iterator[list[int]]:
        target = request.target
        if not target.has_hidden:  # before any token: this strategy cannot run on this graph
            raise EdgegenError(f"strategy 'hydra' needs the target's hidden states, which this {target.backend} "
                               "graph lacks (an ONNX export made before edgegen added them): re-export the model, or "
                               "use the openvino backend")
        self.hydra = HydraDrafter(open_heads(target, self.heads), target, self.confidence)
        self.drafter = LookupOrHydra(self.hydra) if self.lookup else self.hydra
        counters = request.counters
        for new in super().decode(request):
            for i, (p, a) in enumerate(zip(self.hydra.proposed, self.hydra.accepted, strict=True)):
                counters.extra[f"head{i + 1}_proposed"] = float(p)
                counters.extra[f"head{i + 1}_accepted"] = float(a)
            yield new


def open_heads(target: Session, heads: str | Path | DraftHeads | None) -> DraftHeads:
    """The heads to draft with: ``heads`` itself, a heads file, or (None) the default model's shipped heads."""
    if heads is not None and not isinstance(heads, str | Path):
        return heads
    from edgegen.artifacts import DEFAULT_MODEL_NAME, default_heads_file

    manifest = target.manifest
    if heads is None:
        if manifest.name != DEFAULT_MODEL_NAME:
            raise EdgegenError(f"strategy 'hydra' has no heads for model '{manifest.name}': pass heads=PATH "
                               f"(heads are shipped for {DEFAULT_MODEL_NAME} only)")
        heads = default_heads_file()
    return _load_heads(str(Path(heads).expanduser().resolve()), manifest.hidden_size, manifest.vocab_size)


@lru_cache(maxsize=4)
def _load_heads(path: str, hidden_size: int, vocab_size: int) -> DraftHeads:
    from edgegen.heads import HydraHeads

    heads = HydraHeads.open(path, int8=True)  # products on ONNX Runtime int8: 0.67x NumPy's time (docs/hydra.md)
    if heads.hidden_size != hidden_size or heads.vocab_size != vocab_size:
        raise EdgegenError(f"heads {path} were made for hidden size {heads.hidden_size} and a vocabulary of "
                           f"{heads.vocab_size}; the target has {hidden_size} and {vocab_size}")
    return heads
