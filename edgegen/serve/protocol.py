"""OpenAI request bodies -> checked, typed requests; every bad field is a 400 naming it.

Unknown fields are ignored (clients send many); fields edgegen cannot honour with a non-default
value (logprobs, logit_bias, presence/frequency penalties, echo, suffix, best_of) are refused.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.grammar import grammar_from_response_format
from edgegen.serve.errors import bad_param, unsupported
from edgegen.serve.tools import ToolPlan, parse_tools, request_calls

MAX_N = 16
MAX_STOP = 16
ROLES = ("system", "user", "assistant", "tool", "developer")


@dataclass(frozen=True)
class Sampling:
    """The generation fields shared by both endpoints (OpenAI defaults: temperature 1, top_p 1, n 1)."""

    max_tokens: int | None  # None: up to the end of the context
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    seed: int | None
    stop: list[str]
    n: int
    strategy: str
    ignore_eos: bool


@dataclass(frozen=True)
class GenerationRequest:
    """One checked request: a chat (``messages``) or a completion (``prompt``)."""

    model: str | None
    sampling: Sampling
    stream: bool
    include_usage: bool
    messages: list[dict[str, Any]] | None = None  # chat: template-ready messages
    prompt: str | list[int] | None = None  # completions: text or token ids
    grammar: str | None = None  # response_format's llguidance grammar
    tools: ToolPlan | None = None


def _int(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise bad_param(name, f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise bad_param(name, f"{name} must be in [{lo}, {hi if hi is not None else 'inf'}], got {value}")
    return int(value)


def _float(body: dict[str, Any], name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise bad_param(name, f"{name} must be a number, got {value!r}")
    if value > hi or value < lo or (lo_open and value == lo):
        raise bad_param(name, f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {value}")
    return float(value)


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_param(name, f"{name} must be true or false, got {value!r}")
    return value


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise unsupported(name, "a non-zero value (use the extra field repetition_penalty)")
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise unsupported("logprobs", "returning log probabilities")
    if body.get("logit_bias"):
        raise unsupported("logit_bias", "a logit bias")


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_param("stop", "stop must be a non-empty string or a list of non-empty strings")
    if len(stops) > MAX_STOP:
        raise bad_param("stop", f"stop takes at most {MAX_STOP} strings")
    return stops


def _sampling(body: dict[str, Any], max_tokens_field: str = "max_tokens") -> Sampling:
    _refuse_unsupported(body)
    max_tokens = _int(body, max_tokens_field, None, 1)
    if max_tokens is None and max_tokens_field != "max_tokens":  # chat: the older name of max_completion_tokens
        max_tokens = _int(body, "max_tokens", None, 1)
    strategy = body.get("strategy", "auto")
    if not isinstance(strategy, str) or not strategy:
        raise bad_param("strategy", f"strategy must be a strategy name, got {strategy!r}")
    return Sampling(
        max_tokens=max_tokens, temperature=_float(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True), top_k=_int(body, "top_k", 0, 0) or 0,
        repetition_penalty=_float(body, "repetition_penalty", 1.0, 0.0, 10.0, lo_open=True),
        seed=_int(body, "seed", None, 0, 2**63 - 1), stop=_stop(body), n=_int(body, "n", 1, 1, MAX_N) or 1,
        strategy=strategy, ignore_eos=_bool(body, "ignore_eos"))


def _model(body: dict[str, Any]) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_param("model", f"model must be a string, got {model!r}")
    return model


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise bad_param("stream_options", "stream_options must be an object")
    if not stream:
        raise bad_param("stream_options", "stream_options needs stream: true")
    return stream, _bool(options, "include_usage")


def _content(value: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts (other part types are not supported)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_param(where, f"{where}: only text content parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise bad_param(where, f"{where} must be a string or a list of text parts")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Template-ready messages (HF's convention): role and content; an assistant's ``tool_calls`` with
    their arguments decoded; a tool result's ``tool_call_id`` and ``name``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_param("messages", "messages must be a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise bad_param(where, f"{where} must be an object with a role in {', '.join(ROLES)}")
        role = "system" if message["role"] == "developer" else message["role"]
        calls = message.get("tool_calls") if role == "assistant" else None
        if calls:  # an earlier turn's calls: the content may be null
            content = None if message.get("content") is None else _content(message["content"], where)
            out.append({"role": role, "content": content, "tool_calls": request_calls(calls, f"{where}.tool_calls")})
            continue
        entry: dict[str, Any] = {"role": role, "content": _content(message.get("content"), where)}
        if role == "tool":
            entry.update({k: message[k] for k in ("tool_call_id", "name") if isinstance(message.get(k), str)})
        out.append(entry)
    return out


def _response_format(body: dict[str, Any]) -> str | None:
    response_format = body.get("response_format")
    if response_format is None:
        return None
    try:
        return grammar_from_response_format(response_format)
    except EdgegenError as e:
        raise bad_param("response_format", str(e)) from None


def parse_chat(body: dict[str, Any]) -> GenerationRequest:
    """POST /v1/chat/completions."""
    stream, include_usage = _stream(body)
    tools = parse_tools(body)
    grammar = _response_format(body)
    if tools is not None and grammar is not None:
        raise bad_param("response_format", "response_format cannot be combined with tools (tool calls are "
                        "constrained to the tools' schemas)")
    return GenerationRequest(model=_model(body), sampling=_sampling(body, "max_completion_tokens"), stream=stream,
                             include_usage=include_usage, messages=_messages(body), grammar=grammar, tools=tools)


def parse_completion(body: dict[str, Any]) -> GenerationRequest:
    """POST /v1/completions: one prompt (a string or token ids; a batch of several is not supported)."""
    stream, include_usage = _stream(body)
    for name, default in (("echo", False), ("suffix", None)):
        if body.get(name) not in (None, default):
            raise unsupported(name, f"{name}")
    if body.get("best_of") not in (None, 1):
        raise unsupported("best_of", "best_of > 1")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    is_ids = isinstance(prompt, list) and prompt and all(
        isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in prompt)
    if not (isinstance(prompt, str) and prompt) and not is_ids:
        raise bad_param("prompt", "prompt must be a non-empty string or a list of token ids (one prompt per request)")
    return GenerationRequest(model=_model(body), sampling=_sampling(body), stream=stream, include_usage=include_usage,
                             prompt=prompt if isinstance(prompt, str) else [int(t) for t in prompt],
                             grammar=_response_format(body))
