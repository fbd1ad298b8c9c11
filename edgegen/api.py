"""The Python API: ``edgegen.load(...)`` returns a Generator that generates or streams text."""

from __future__ import annotations

import numbers
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgegen import runtimes
from edgegen.drafter import DEFAULT_DRAFT, default_drafter_model
from edgegen.errors import EdgegenError
from edgegen.manifest import Manifest, read_manifest
from edgegen.models import choose_backend, ensure_embeddings, resolve_model
from edgegen.profiles import DeviceProfile, load_profile
from edgegen.sampling import Sampler, SamplingConfig
from edgegen.strategies import (
    DecodeCounters,
    DecodeRequest,
    Drafter,
    ModelDrafter,
    MultiDraftStrategy,
    RankedDraft,
    make_strategy,
)
from edgegen.tokenizer import Message, StreamDecoder, TextTokenizer

# device -> profile used when none is named
_DEVICE_PROFILES = {"CPU": "cpu", "GPU": "core-ultra-igpu", "NPU": "core-ultra-npu", "CUDA": "cuda-server",
                    "DML": "cpu"}
AUTO = "auto"  # the default strategy: chosen per call (Generator._strategy_name)
NPUW_ENV = "EDGEGEN_NPUW_DEVICES"  # e.g. "CPU": run the NPU code path without an NPU


@dataclass(frozen=True)
class GenerationStats:
    """Timings and counts of one generation. Times in milliseconds."""

    prompt_tokens: int
    new_tokens: int
    prefill_ms: float
    ttft_ms: float  # request start to first new token
    decode_ms: float  # first new token to last
    tokens_per_s: float  # decode rate: (new_tokens - 1) / decode time
    target_steps: int  # target forwards after prefill
    tokens_per_step: float  # new tokens per target forward (1 for AR)
    target_ms: float
    draft_ms: float
    draft_proposed: int
    draft_accepted: int
    acceptance_rate: float
    strategy: str
    backend: str
    device: str


@dataclass(frozen=True)
class DraftResult:
    """One of the drafts of a multi-draft strategy (superposed), ranked by ``score``."""

    text: str
    token_ids: list[int]  # generated tokens only (EOS excluded)
    score: float  # the strategy's ranking score, higher is better (superposed: mean log score per token)
    finish_reason: str  # "eos" | "stop" | "length"


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: list[int]  # generated tokens only (EOS excluded)
    prompt_token_ids: list[int]
    stats: GenerationStats
    finish_reason: str  # "eos" | "stop" | "length"
    drafts: list[DraftResult] = field(default_factory=list)  # multi-draft strategies: best first, [0] is text

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class _TextOutput:
    """One generated sequence's tokens -> final text under the stopping rules (EOS, stop strings, length).

    Text that may still become a stop string is held back until a later token rules it out.
    """

    def __init__(self, tokenizer: TextTokenizer, eos: set[int], stop: list[str], max_tokens: int) -> None:
        self._decoder = StreamDecoder(tokenizer)
        self._eos, self._stop, self._max = eos, stop, max_tokens
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._emitted = 0
        self.tokens: list[int] = []
        self.text = ""
        self.finish = "length"  # "eos" | "stop" | "length"

    @property
    def done(self) -> bool:
        return self.finish != "length" or len(self.tokens) >= self._max

    def push(self, new: Iterable[int]) -> bool:
        """Add tokens (those after the end are ignored); True once the sequence has ended."""
        for token in new:
            if self.done:
                break
            if token in self._eos:
                self.finish = "eos"
                break
            self.tokens.append(token)
            self.text += self._decoder.push([token])
            if self._stop and (cut := _find_stop(self.text, self._stop, self._emitted - self._hold)) is not None:
                self.text, self.finish = self.text[:cut], "stop"
        return self.done

    def take(self) -> str:
        """Text that no later token can change, not returned before."""
        safe = len(self.text) - self._hold
        if safe <= self._emitted:
            return ""
        piece, self._emitted = self.text[self._emitted : safe], safe
        return piece

    def close(self) -> str:
        """The sequence has ended: the rest of its text."""
        if self.finish != "stop":
            self.text += self._decoder.flush()
        piece, self._emitted = self.text[self._emitted :], len(self.text)
        return piece


class TextStream:
    """Iterator of text pieces; ``result`` holds the GenerationResult once it is exhausted."""

    def __init__(self, events: Iterator[str]) -> None:
        self._events = events
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        return self._events


class Generator:
    """A loaded model on one backend and device. Create with ``edgegen.load``."""

    def __init__(self, folder: Path, manifest: Manifest, session: runtimes.Session, profile: DeviceProfile,
                 drafter: Drafter | None = None,
                 open_embeddings: Callable[[], runtimes.Session] | None = None,
                 open_default_drafter: Callable[[], Drafter] | None = None) -> None:
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

    @property
    def backend(self) -> str:
        return self.session.backend

    def generate(self, prompt: str | Sequence[Message], max_new_tokens: int = 256, temperature: float = 0.0,
                 chat: bool = True, strategy: str = AUTO, *, top_k: int = 0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, seed: int | None = None, stop: Sequence[str] = (),
                 ignore_eos: bool = False, **options: Any) -> GenerationResult:
        """Generate a completion of ``prompt``: a string, chat messages [{"role", "content"}] or token ids.

        ``chat`` applies the model's chat template (a string becomes one user message; token ids are
        used as given); ``strategy`` names a decode strategy and ``options`` go to it. The default,
        "auto", is "speculative" when a draft model was loaded, else "prompt-lookup" when greedy
        (the same tokens as "ar", faster where the output repeats the context), else "ar" (also on
        static-shape NPU graphs, which decode one token per call).
        Greedy when ``temperature`` is 0; otherwise sampling with top_k/top_p/repetition_penalty
        and ``seed``. ``ignore_eos`` generates exactly ``max_new_tokens`` (benchmarks).

        ``strategy="superposed"`` (options num_drafts=3, alpha, ngram, lm_temperature=0.06; see
        strategies/superposed.py) returns ``num_drafts`` completions in ``result.drafts``, best first;
        ``text``/``token_ids`` are the best one's. It is deterministic (temperature must stay 0).
        """
        stream = self.stream(prompt, max_new_tokens, temperature, chat, strategy, top_k=top_k, top_p=top_p,
                             repetition_penalty=repetition_penalty, seed=seed, stop=stop, ignore_eos=ignore_eos,
                             **options)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(self, prompt: str | Sequence[Message], max_new_tokens: int = 256, temperature: float = 0.0,
               chat: bool = True, strategy: str = AUTO, *, top_k: int = 0, top_p: float = 1.0,
               repetition_penalty: float = 1.0, seed: int | None = None, stop: Sequence[str] = (),
               ignore_eos: bool = False, **options: Any) -> TextStream:
        """Like ``generate`` but yields text pieces as they are final (never half a character).

        The returned TextStream's ``result`` is set when iteration ends. A multi-draft strategy
        (superposed) ranks its drafts only at the end: it yields the best draft's text in one piece
        once generation is over, and ``result.drafts`` holds all of them.
        """
        config = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=repetition_penalty, seed=seed)
        if not prompt or (isinstance(prompt, str) and not prompt.strip()):
            raise EdgegenError("prompt is empty")
        if max_new_tokens < 1:
            raise EdgegenError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if _is_token_ids(prompt):
            prompt_ids = [int(t) for t in prompt]
            if min(prompt_ids) < 0 or max(prompt_ids) >= self.manifest.vocab_size:
                raise EdgegenError(f"prompt token ids must be 1 or more ids in [0, {self.manifest.vocab_size})")
        else:
            prompt_ids = self.tokenizer.encode_prompt(prompt, chat)
        decoder = make_strategy(self._strategy_name(strategy, temperature), self._drafter_for(strategy), **options)
        session = self._session_for(decoder)
        limit = session.max_length
        if len(prompt_ids) + max_new_tokens > limit:
            raise EdgegenError(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                               f"the {limit} tokens this {session.device} session holds")
        eos = frozenset() if ignore_eos else frozenset(self.manifest.eos_token_ids)
        request = DecodeRequest(session, prompt_ids, Sampler(config), max_new_tokens, eos_token_ids=eos,
                                model_folder=self.folder)
        stream = TextStream(iter(()))
        stream._events = self._run(decoder, request, list(stop), stream)
        return stream

    def _strategy_name(self, strategy: str, temperature: float) -> str:
        if strategy != AUTO:
            return strategy
        if self.manifest.static_shapes:  # the NPU graph forwards one token at a time after the prompt
            return "ar"
        if self.drafter is not None:
            return "speculative"
        return "prompt-lookup" if temperature == 0 else "ar"

    def _drafter_for(self, strategy: str) -> Drafter | None:
        """The loaded draft model; strategy="speculative" on the default model without one opens the shipped
        drafter (exported into the cache on first use)."""
        if self.drafter is not None or strategy != "speculative" or self._open_default_drafter is None:
            return self.drafter
        if self._default_drafter is None:
            self._default_drafter = self._open_default_drafter()
        return self._default_drafter

    def _session_for(self, decoder: Any) -> runtimes.Session:
        """The session a strategy runs on. Superposed decoding feeds input embeddings: on a Generator
        loaded without ``embeddings=True`` its first call opens a second session on the export's
        input-embedding graph (adding the graph to a cached auto-export once) and keeps it; loading
        with ``embeddings=True`` avoids that second copy of the weights."""
        if not getattr(decoder, "needs_embeddings", False) or hasattr(self.session, "forward_embeddings"):
            return self.session
        if self._embeddings_session is None:
            if self._open_embeddings is None:
                raise EdgegenError(f"strategy '{decoder.name}' feeds input embeddings: load the model with "
                                   "edgegen.load(..., embeddings=True)")
            self._embeddings_session = self._open_embeddings()
        return self._embeddings_session

    def _run(self, decoder: Any, request: DecodeRequest, stop: list[str], stream: TextStream) -> Iterator[str]:
        start = time.perf_counter()
        first = None
        eos = set(request.eos_token_ids)
        out = _TextOutput(self.tokenizer, eos, stop, request.max_new_tokens)
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
            steps.close()
        if piece := out.close():
            yield piece
        end = time.perf_counter()
        drafts = []
        if isinstance(decoder, MultiDraftStrategy):
            drafts = [self._draft_result(d, eos, stop, request.max_new_tokens) for d in decoder.drafts]
        stream.result = GenerationResult(text=out.text, token_ids=out.tokens, prompt_token_ids=request.prompt_ids,
                                         stats=self._stats(decoder, request, len(out.tokens), start, first, end),
                                         finish_reason=out.finish, drafts=drafts)

    def _draft_result(self, draft: RankedDraft, eos: set[int], stop: list[str], max_tokens: int) -> DraftResult:
        """A multi-draft strategy's draft under the same stopping rules as the main text."""
        out = _TextOutput(self.tokenizer, eos, stop, max_tokens)
        out.push(draft.tokens)
        out.close()
        return DraftResult(text=out.text, token_ids=out.tokens, score=draft.score, finish_reason=out.finish)

    def _stats(self, decoder: Any, request: DecodeRequest, n: int, start: float, first: float | None,
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


def _is_token_ids(prompt: object) -> bool:
    return not isinstance(prompt, str) and all(isinstance(t, numbers.Integral) for t in prompt)


def _find_stop(text: str, stop: list[str], search_from: int) -> int | None:
    """Index where the earliest stop string starts in text (searching only text not yet emitted)."""
    hits = [i for s in stop if (i := text.find(s, max(0, search_from))) >= 0]
    return min(hits) if hits else None


def load(model: str | Path | None = None, draft: str | Path | None = None, backend: str | None = None,
         device: str | None = None, profile: str | None = None, max_length: int | None = None,
         threads: int | None = None, draft_confidence: float = 0.0,
         consistent_rows: bool | None = None, embeddings: bool = False) -> Generator:
    """Load a model for generation.

    model: None for the embedded SmolLM2-135M-Instruct (exported on first use), an exported folder,
    a Hugging Face model folder or a .gguf file. backend: "onnxruntime", "openvino" or None to
    pick the faster for the device (measured once). device: "CPU" (default), "GPU", "NPU", "CUDA",
    "DML". profile: a device profile name (default: the one for the device). draft: an exported
    draft model (same tokenizer and vocabulary) for strategy="speculative", or "default" for the
    drafter shipped with the default model (which strategy="speculative" also opens on first use
    when none is given); draft_confidence stops a draft early when the drafter's top probability
    falls below it. consistent_rows (default on) makes every forward compute its rows with the same
    kernels, so drafting strategies reproduce AR output token for token; off makes plain AR up to
    ~20% faster on ONNX Runtime's quantized graphs, whose single-row kernel differs from the
    multi-row one, at the price of AR and the drafting strategies disagreeing. embeddings: run the export's
    input-embedding graph (superposed decoding needs it; the default model gets it on first use).
    """
    if consistent_rows is None:
        consistent_rows = True  # the default strategy drafts (prompt lookup): its output must be AR's
    device = (device or (load_profile(profile).device if profile else "CPU")).upper()
    if device not in _DEVICE_PROFILES:
        raise EdgegenError(f"unknown device '{device}' (known: {', '.join(_DEVICE_PROFILES)})")
    if profile is None:
        profile = _DEVICE_PROFILES[device]
    prof = load_profile(profile)
    folder = resolve_model(model, prof, embeddings=embeddings)
    manifest = read_manifest(folder)

    def open_session(name: str, with_embeddings: bool = embeddings) -> runtimes.Session:
        options: dict[str, Any] = {"max_length": max_length, "threads": threads, "consistent_rows": consistent_rows}
        if name == "openvino" and device == "NPU" and os.environ.get(NPUW_ENV):
            options["npuw_devices"] = os.environ[NPUW_ENV]
        where, info = folder, manifest
        if with_embeddings and not embeddings:  # asked later (superposed on a plain Generator)
            where = ensure_embeddings(folder)  # a cached auto-export gains the graphs once; others: clear error
            info = read_manifest(where)
        return runtimes.open_session(where, info, name, device=device, embeddings=with_embeddings, **options)

    if backend is None:
        backend = prof.backend if prof.backend != "auto" else choose_backend(folder, manifest, device, open_session)
    runtimes.graph_format(backend)  # unknown backend -> clear error before loading anything
    session = open_session(backend)

    def open_drafter(name: str | Path) -> ModelDrafter:
        if str(name) == DEFAULT_DRAFT:
            draft_folder = default_drafter_model(prof.name)
        else:
            draft_folder = resolve_model(name, prof)
        draft_manifest = read_manifest(draft_folder)
        check_draft_compatible(folder, manifest, draft_folder, draft_manifest)
        draft_session = runtimes.open_session(draft_folder, draft_manifest, backend, device=device,
                                              max_length=session.max_length, threads=threads)
        head = (draft_manifest.extras.get("drafter") or {}).get("head_vocab")
        return ModelDrafter(draft_session, confidence=draft_confidence,
                            head_vocab=np.asarray(head) if head else None, target_vocab=manifest.vocab_size)

    drafter = open_drafter(draft) if draft is not None else None
    is_default = model is None or str(model) == "default"
    return Generator(folder, manifest, session, prof, drafter, open_embeddings=lambda: open_session(backend, True),
                     open_default_drafter=(lambda: open_drafter(DEFAULT_DRAFT)) if is_default else None)


def check_draft_compatible(folder: Path, manifest: Manifest, draft_folder: Path, draft: Manifest) -> None:
    """A drafter must share the target's vocabulary and tokenizer, or its tokens mean other things. A drafter
    with a reduced head (extras.drafter.head_vocab) must name target ids, and have been made for this vocabulary."""
    facts = draft.extras.get("drafter") or {}
    head = facts.get("head_vocab")
    vocab = facts.get("target_vocab_size", draft.vocab_size) if head else draft.vocab_size
    if vocab != manifest.vocab_size:
        raise EdgegenError(f"draft model {draft.name} has a vocabulary of {vocab} tokens; "
                           f"the target {manifest.name} has {manifest.vocab_size}")
    if head and (len(head) != draft.vocab_size or not 0 <= min(head) <= max(head) < manifest.vocab_size):
        raise EdgegenError(f"draft model {draft.name} has a malformed reduced head vocabulary")
    mine = TextTokenizer(folder, manifest).vocabulary()
    theirs = TextTokenizer(draft_folder, draft).vocabulary()
    if mine != theirs:
        raise EdgegenError(f"draft model {draft.name} uses another tokenizer than the target {manifest.name}")
