"""A checked request -> a plan of Generator calls (on the event loop) -> their run (on the worker thread).

``n`` choices: with greedy decoding and no grammar, one superposed-decoding pass returns ``n``
different drafts (strategy "superposed", num_drafts=n); otherwise the choices are ``n`` generations
run one after another (with ``seed``, choice i uses seed + i; greedy ones are all the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.serve.engine import Job
from edgegen.serve.errors import ApiError, bad_param
from edgegen.serve.protocol import GenerationRequest
from edgegen.serve.tools import ModelTools, chat_inputs

SUPERPOSED = "superposed"


@dataclass(frozen=True)
class Started:
    """The generation passed every check and runs: the response may begin."""

    prompt_tokens: int


@dataclass(frozen=True)
class Piece:
    index: int  # the choice
    text: str


@dataclass(frozen=True)
class Finished:
    index: int
    tokens: int
    finish_reason: str  # edgegen's: "eos" | "stop" | "length"


@dataclass(frozen=True)
class Plan:
    prompt_ids: list[int]
    options: dict[str, Any]  # keyword arguments of Generator.stream
    grammar: str | None
    n: int
    superposed: bool  # the n choices are one superposed pass's drafts


def make_plan(gen: Any, request: GenerationRequest, grammar: str | None, tools: ModelTools) -> Plan:
    """Tokenize the prompt (a chat with the model's tool handling) and check it fits the context; a bad
    request is an ApiError."""
    try:
        prompt_ids = _prompt_ids(gen, request, tools)
    except EdgegenError as e:
        raise bad_param("messages" if request.messages is not None else "prompt", str(e)) from None
    s = request.sampling
    limit = gen.session.max_length
    room = limit - len(prompt_ids)
    if room < 1 or (s.max_tokens is not None and s.max_tokens > room):
        asked = f" + max_tokens ({s.max_tokens})" if s.max_tokens is not None else ""
        raise ApiError(400, f"the prompt ({len(prompt_ids)} tokens){asked} exceeds the model's context of {limit} "
                       "tokens", param="messages" if request.messages is not None else "prompt",
                       code="context_length_exceeded")
    superposed = grammar is None and s.temperature == 0 and (
        s.strategy == SUPERPOSED or (s.n > 1 and s.strategy == "auto"))
    options: dict[str, Any] = {
        "max_new_tokens": s.max_tokens or room, "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
        "repetition_penalty": s.repetition_penalty, "seed": s.seed, "stop": s.stop, "ignore_eos": s.ignore_eos,
        "strategy": SUPERPOSED if superposed else s.strategy, "chat": True}  # token ids: used as given
    if superposed:
        options["num_drafts"] = s.n
    return Plan(prompt_ids, options, grammar, s.n, superposed)


def _prompt_ids(gen: Any, request: GenerationRequest, tools: ModelTools) -> list[int]:
    if request.messages is not None:
        messages, specs = chat_inputs(request.messages, request.tools, tools)
        return gen.tokenizer.encode_prompt(messages, chat=True, tools=specs)
    if isinstance(request.prompt, str):
        return gen.tokenizer.encode(request.prompt)
    ids = list(request.prompt or [])
    if not ids or min(ids) < 0 or max(ids) >= gen.manifest.vocab_size:
        raise EdgegenError(f"prompt token ids must be in [0, {gen.manifest.vocab_size})")
    return ids


def run(gen: Any, plan: Plan, job: Job) -> None:
    """Generate the plan's choices, sending Started, Pieces and Finished events; stop when the job is cancelled."""
    grammars = None
    if plan.grammar is not None:
        from edgegen.grammar import grammars_for

        grammars = grammars_for(gen.folder, gen.manifest)
    for index in range(1 if plan.superposed else plan.n):
        options = dict(plan.options)
        if index and options["seed"] is not None:
            options["seed"] += index
        constraint = grammars.constraint(plan.grammar) if grammars is not None else None
        with gen.stream(plan.prompt_ids, constraint=constraint, **options) as stream:
            if index == 0:
                job.emit(Started(len(plan.prompt_ids)))
            for piece in stream:
                if job.cancelled:
                    return  # closing the stream stops the generation and frees the Generator
                if not plan.superposed:
                    job.emit(Piece(index, piece))
        result = stream.result
        if plan.superposed:
            for k, draft in enumerate(result.drafts):
                job.emit(Piece(k, draft.text))
                job.emit(Finished(k, len(draft.token_ids), draft.finish_reason))
        else:
            job.emit(Finished(index, len(result.token_ids), result.finish_reason))
