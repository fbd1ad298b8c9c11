"""The Generator: a loaded model that generates or streams text, safely shared between threads."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgegen import runtimes
from edgegen.arguments import check_bool, check_generation, check_messages, check_text, prompt_kind
from edgegen.errors import EdgegenError
from edgegen.grammar import response_format_constraint
from edgegen.manifest import Manifest
from edgegen.profiles import DeviceProfile
from edgegen.prompt_cache import PromptCache, can_snapshot
from edgegen.results import DraftResult, GenerationResult, GenerationStats
from edgegen.sampling import Sampler
from edgegen.stopping import TextOutput
from edgegen.strategies import (
    STRATEGIES,
    DecodeCounters,
    DecodeRequest,
    Drafter,
    RankedDraft,
    Strategy,
    make_strategy,
    strategy_type,
)
from edgegen.tokenizer import Message, TextTokenizer

AUTO = "auto"  # the default strategy: chosen per call (Generator._auto_strategy)


class _ResultSlot:
    """Where a stream's generator leaves its result. The generator holds this, not the TextStream, so a
    dropped stream has no reference cycle: reference counting frees it (and its session) at once."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: GenerationResult | None = None


class TextStream:
    """Iterator of text pieces; ``result`` holds the GenerationResult once it is exhausted.

    The stream owns its Generator's session from its first piece until it is exhausted, closed
    (``close()`` or a ``with`` block) or dropped; until then other calls on the Generator wait.
    """

    def __init__(self, events: Iterator[str], slot: _ResultSlot) -> None:
        self._events = events
        self._slot = slot
        # Closing the inner generator runs its ``finally``: the session is released even if the
        # stream is abandoned half-way (``atexit`` off: nothing to release at interpreter exit).
        self._release = weakref.finalize(self, events.close)  # type: ignore[attr-defined]
        self._release.atexit = False

    @property
    def result(self) -> GenerationResult | None:
        return self._slot.value

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._events)

    def close(self) -> None:
        """Stop generating and release the session (a no-op once exhausted or closed)."""
        self._release()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Generator:
    """A loaded model on one backend and device. Create with ``edgegen.load``.

    Threads: one Generator may be shared by many threads. It has one session (one KV cache), so
    generations run one at a time: ``generate`` holds the session for the whole call and a stream
    holds it from its first piece until it is exhausted, closed or dropped; a call from another
    thread meanwhile waits for it. A thread that still has a stream open and starts another
    generation on the same Generator gets an EdgegenError (waiting would deadlock; finish or
    ``close()`` the first stream). For generations that run in parallel, load one Generator per
    thread. ``prompt_cache`` keeps host copies of earlier sequences' caches, so prompts that take
    turns (two conversations) each keep their prefix (edgegen/prompt_cache.py).
    """

    def __init__(self, folder: Path, manifest: Manifest, session: runtimes.Session, profile: DeviceProfile,
                 drafter: Drafter | None = None,
                 open_embeddings: Callable[[], runtimes.Session] | None = None,
                 open_default_drafter: Callable[[], Drafter] | None = None,
                 prompt_cache: PromptCache | None = None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.session = session
        self.profile = profile
        self.tokenizer = TextTokenizer(folder, manifest)
        self.drafter = drafter  # the draft model's drafter, used by strategy="speculative"
        self._open_embeddings = open_embeddings  # opens an input-embedding session (superposed), on first need
        self._embeddings_session: runtimes.Session | None = None
        self._open_default_drafter = open_default_drafter  # the shipped drafter (default model), on first need
        self._default_drafter: Drafter | None = None
        self._busy = threading.Lock()  # held by the running generation (a Lock: any thread may release it)
        self._owner: int | None = None  # the thread that holds it
        self._opening = threading.Lock()  # one thread opens a lazily loaded session or drafter
        # KV snapshots of earlier sequences (edgegen/prompt_cache.py): off where the session cannot copy its cache
        self.prompt_cache = prompt_cache if can_snapshot(session) else None

    @property
    def backend(self) -> str:
        return self.session.backend

    def generate(self, prompt: str | Sequence[Message] | Sequence[int], max_new_tokens: int = 256,
                 temperature: float = 0.0, chat: bool = True, strategy: str = AUTO, *, top_k: int = 0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
                 stop: str | Sequence[str] = (), ignore_eos: bool = False, constraint: object | None = None,
                 response_format: dict[str, Any] | None = None, **options: Any) -> GenerationResult:
        """Generate a completion of ``prompt``: a string, chat messages [{"role", "content"}] or token ids.

        ``chat`` applies the model's chat template (a string becomes one user message; token ids are
        used as given); roles are system, user, assistant and tool. ``strategy`` names a decode strategy
        and ``options`` go to it. The default, "auto", is "speculative" when a draft model was loaded,
        else "prompt-lookup" when greedy (the same tokens as "ar", faster where the output repeats the
        context), else "ar".
        Greedy when ``temperature`` is 0; otherwise sampling with top_k/top_p/repetition_penalty
        and ``seed`` (an int >= 0). ``stop``: a string or a list of non-empty strings; a single
        string is one stop string. ``ignore_eos`` generates exactly ``max_new_tokens`` (benchmarks).
        ``response_format``: the output follows a grammar (constrained decoding with llguidance, the
        ``serve`` extra), given as OpenAI's {"type": "json_object"} or {"type": "json_schema",
        "json_schema": {"schema": {...}}}, or edgegen's {"type": "regex", "regex": ...} or
        {"type": "lark", "lark": ...}; {"type": "text"} or None: unconstrained. ``constraint``: the same
        from an object of your own (edgegen.sampling.Constraint), one per generation; not both. A
        constraint runs with "ar", "prompt-lookup" and "speculative" (drafts are checked against
        it: greedy output is AR's, sampling keeps AR's constrained distribution); others refuse it.

        ``strategy="superposed"`` (options num_drafts=3, alpha, ngram, lm_temperature=0.06; see
        strategies/superposed.py) returns ``num_drafts`` completions in ``result.drafts``, best first;
        ``text``/``token_ids`` are the best one's. It is deterministic (temperature must stay 0).

        Any bad argument is an EdgegenError raised before generation starts.
        """
        with self.stream(prompt, max_new_tokens, temperature, chat, strategy, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty, seed=seed, stop=stop, ignore_eos=ignore_eos,
                         constraint=constraint, response_format=response_format, **options) as stream:
            for _ in stream:
                pass
        assert stream.result is not None
        return stream.result

    def stream(self, prompt: str | Sequence[Message] | Sequence[int], max_new_tokens: int = 256,
               temperature: float = 0.0, chat: bool = True, strategy: str = AUTO, *, top_k: int = 0,
               top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
               stop: str | Sequence[str] = (), ignore_eos: bool = False, constraint: object | None = None,
               response_format: dict[str, Any] | None = None, **options: Any) -> TextStream:
        """Like ``generate`` but yields text pieces as they are final (never half a character).

        The returned TextStream's ``result`` is set when iteration ends; ``close()`` it (or use it in a
        ``with`` block) to stop early and free the session for other calls (see the class docstring).
        A multi-draft strategy (superposed) ranks its drafts only at the end: it yields the best
        draft's text in one piece once generation is over, and ``result.drafts`` holds all of them.
        """
        max_new_tokens, config, stops = check_generation(max_new_tokens, temperature, top_k, top_p,
                                                         repetition_penalty, seed, stop)
        eos = frozenset() if check_bool("ignore_eos", ignore_eos) else frozenset(self.manifest.eos_token_ids)
        prompt_ids = self._prompt_ids(prompt, check_bool("chat", chat))
        constraint = self._constraint(constraint, response_format)
        name = self._strategy_name(check_text("strategy", strategy), config.temperature, constraint)
        decoder = make_strategy(name, self._drafter_for(name), **options)
        session = self.session_for(decoder)
        limit = session.max_length
        prompt_limit = getattr(session, "max_prompt_length", limit)  # a static NPU prefill graph's length
        if len(prompt_ids) > prompt_limit:
            raise EdgegenError(f"prompt of {len(prompt_ids)} tokens exceeds the {prompt_limit} tokens the "
                               f"{session.device} graph takes as a prompt (the profile's max_prompt_len)")
        if len(prompt_ids) + max_new_tokens > limit:
            raise EdgegenError(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                               f"the {limit} tokens this {session.device} session holds")
        request = DecodeRequest(session, prompt_ids, Sampler(config, constraint), max_new_tokens,
                                eos_token_ids=eos, model_folder=self.folder)
        slot = _ResultSlot()
        return TextStream(self._owned(self._run(decoder, request, stops, slot)), slot)

    def _prompt_ids(self, prompt: object, chat: bool) -> list[int]:
        if isinstance(prompt, np.ndarray):
            prompt = prompt.tolist()
        kind = prompt_kind(prompt)
        if kind == "token_ids":
            ids = [int(t) for t in prompt]  # type: ignore[union-attr]
            if min(ids) < 0 or max(ids) >= self.manifest.vocab_size:
                raise EdgegenError(f"prompt token ids must be 1 or more ids in [0, {self.manifest.vocab_size})")
            return ids
        if kind == "messages":
            return self.tokenizer.encode_prompt(check_messages(prompt), chat)  # type: ignore[arg-type]
        return self.tokenizer.encode_prompt(prompt, chat)  # type: ignore[arg-type]

    def _constraint(self, constraint: object | None, response_format: dict[str, Any] | None) -> object | None:
        """The generation's constraint: given, or a fresh one for ``response_format``."""
        if response_format is None:
            return constraint
        if constraint is not None:
            raise EdgegenError("give constraint or response_format, not both")
        return response_format_constraint(self.folder, self.manifest, response_format)

    def _strategy_name(self, strategy: str, temperature: float, constraint: object | None) -> str:
        name = self._auto_strategy(temperature) if strategy == AUTO else strategy
        if constraint is not None and not strategy_type(name).takes_constraint:
            able = ", ".join(n for n, cls in STRATEGIES.items() if cls.takes_constraint)
            raise EdgegenError(f"strategy '{name}' cannot follow a constraint (response_format); {able} can")
        return name

    def _auto_strategy(self, temperature: float) -> str:
        if self.drafter is not None:
            return "speculative"
        return "prompt-lookup" if temperature == 0 else "ar"

    def _drafter_for(self, strategy: str) -> Drafter | None:
        """The loaded draft model; strategy="speculative" on the default model without one opens the shipped
        drafter (exported into the cache on first use)."""
        if self.drafter is not None or strategy != "speculative" or self._open_default_drafter is None:
            return self.drafter
        with self._opening:
            if self._default_drafter is None:
                self._default_drafter = self._open_default_drafter()
        return self._default_drafter

    def session_for(self, decoder: Strategy) -> runtimes.Session:
        """The session a strategy runs on (``generate`` and the bench's engines). Superposed decoding feeds
        input embeddings: on a Generator loaded without ``embeddings=True`` its first call opens a second
        session on the export's input-embedding graph (adding the graph to a cached auto-export once) and
        keeps it; loading with ``embeddings=True`` avoids that second copy of the weights."""
        if not decoder.needs_embeddings or hasattr(self.session, "forward_embeddings"):
            return self.session
        with self._opening:
            if self._embeddings_session is None:
                if self._open_embeddings is None:
                    raise EdgegenError(f"strategy '{decoder.name}' feeds input embeddings: load the model with "
                                       "edgegen.load(..., embeddings=True)")
                self._embeddings_session = self._open_embeddings()
        return self._embeddings_session

    def _owned(self, events: Iterator[str]) -> Iterator[str]:
        """``events`` run while holding the session: taken at the first piece, released when they end,
        fail, are closed or are garbage-collected (closing a generator runs its ``finally``)."""
        me = threading.get_ident()
        if self._owner == me:
            raise EdgegenError("this thread already has an open stream on this Generator: exhaust or close() it "
                               "before starting another generation (two would share one KV cache)")
        self._busy.acquire()
        self._owner = me
        try:
            yield from events
        finally:
            events.close()  # type: ignore[attr-defined]
            self._owner = None
            self._busy.release()

    def _run(self, decoder: Strategy, request: DecodeRequest, stop: list[str], slot: _ResultSlot) -> Iterator[str]:
        start = time.perf_counter()
        first = None
        eos = set(request.eos_token_ids)
        out = TextOutput(self.tokenizer, eos, stop, request.max_new_tokens)
        if self.prompt_cache is not None and request.target is self.session:
            self.prompt_cache.prepare(request.target, request.prompt_ids)
        steps = decoder.decode(request)
        try:
            for new in steps:
                if first is None:
                    first = time.perf_counter()
                if out.push(new):
                    break
                if piece := out.take():
                    yield piece
        finally:
            steps.close()  # type: ignore[attr-defined]
        if piece := out.close():
            yield piece
        end = time.perf_counter()
        drafts = []
        if decoder.multi_draft:
            drafts = [self._draft_result(d, eos, stop, request.max_new_tokens) for d in decoder.drafts]  # type: ignore[attr-defined]
        slot.value = GenerationResult(text=out.text, token_ids=out.tokens, prompt_token_ids=request.prompt_ids,
                                      stats=self._stats(decoder, request, len(out.tokens), start, first, end),
                                      finish_reason=out.finish, drafts=drafts)

    def _draft_result(self, draft: RankedDraft, eos: set[int], stop: list[str], max_tokens: int) -> DraftResult:
        """A multi-draft strategy's draft under the same stopping rules as the main text."""
        out = TextOutput(self.tokenizer, eos, stop, max_tokens)
        out.push(draft.tokens)
        out.close()
        return DraftResult(text=out.text, token_ids=out.tokens, score=draft.score, finish_reason=out.finish)

    def _stats(self, decoder: Strategy, request: DecodeRequest, n: int, start: float, first: float | None,
               end: float) -> GenerationStats:
        c: DecodeCounters = request.counters
        first = first if first is not None else end
        decode_s = end - first
        return GenerationStats(
            prompt_tokens=len(request.prompt_ids), new_tokens=n, prefill_ms=c.prefill_s * 1e3,
            ttft_ms=(first - start) * 1e3, decode_ms=decode_s * 1e3,
            tokens_per_s=(n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0,
            target_steps=c.target_steps, tokens_per_step=(n - 1) / c.target_steps if c.target_steps else 0.0,
            target_ms=c.target_s * 1e3, draft_ms=c.draft_s * 1e3, draft_proposed=c.draft_proposed,
            draft_accepted=c.draft_accepted,
            acceptance_rate=c.draft_accepted / c.draft_proposed if c.draft_proposed else 0.0,
            strategy=decoder.name, backend=self.session.backend, device=str(self.session.device))
