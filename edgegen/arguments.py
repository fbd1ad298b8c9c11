"""Checks of public API arguments: a wrong type or range is one EdgegenError naming the argument.

The API (``load``, ``Generator.generate``/``stream``) and the CLI call these before any work, so bad
input never reaches a runtime, a tokenizer or an exporter (where it would be a traceback or, worse,
a silently wrong result: ``stop="Hello"`` split into characters, ``b"hi"`` taken as token ids).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.sampling import SamplingConfig

CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})


def _type_name(value: object) -> str:
    return type(value).__name__


def check_text(name: str, value: object) -> str:
    """A str that UTF-8 can encode (no lone surrogates, as non-UTF-8 argv decodes to)."""
    if not isinstance(value, str):
        raise EdgegenError(f"{name} must be a string, got {_type_name(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise EdgegenError(f"{name} is not valid text: a lone surrogate or undecodable byte at "
                           f"position {e.start}") from None
    return value


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (not a bool, not a float that happens to be whole) within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise EdgegenError(f"{name} must be an integer, got {value!r} ({_type_name(value)})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise EdgegenError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise EdgegenError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_optional_int(name: str, value: object, minimum: int | None = None) -> int | None:
    return None if value is None else check_int(name, value, minimum)


def check_float(name: str, value: object) -> float:
    """A finite real number (an int is fine; a str, a bool, NaN or infinity is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise EdgegenError(f"{name} must be a number, got {value!r} ({_type_name(value)})")
    value = float(value)
    if not math.isfinite(value):
        raise EdgegenError(f"{name} must be finite, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise EdgegenError(f"{name} must be True or False, got {value!r} ({_type_name(value)})")
    return value


def check_optional_text(name: str, value: object) -> str | None:
    return None if value is None else check_text(name, value)


def check_path(name: str, value: object) -> str | os.PathLike[str] | None:
    """None, a str or an os.PathLike (a model folder or file)."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
        if not isinstance(value, str):
            raise EdgegenError(f"{name} must be a str path, got a bytes path")
    return check_text(name, value)


def check_stop(stop: object) -> list[str]:
    """Stop strings: one str is ONE stop string (not its characters); a sequence of non-empty strs."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, bytes | bytearray) or not isinstance(stop, Sequence | set | frozenset):
        raise EdgegenError(f"stop must be a string or a list of strings, got {_type_name(stop)}")
    out = [check_text("stop string", s) for s in stop]
    if any(s == "" for s in out):
        raise EdgegenError("stop strings must not be empty (an empty one would stop before the first token)")
    return out


def check_generation(max_new_tokens: object, temperature: object, top_k: object, top_p: object,
                     repetition_penalty: object, seed: object, stop: object) -> tuple[int, SamplingConfig, list[str]]:
    """A generation's length, sampling settings and stop strings, checked (the API and the CLI, before loading)."""
    config = SamplingConfig(temperature=check_float("temperature", temperature), top_k=check_int("top_k", top_k),
                            top_p=check_float("top_p", top_p),
                            repetition_penalty=check_float("repetition_penalty", repetition_penalty),
                            seed=check_optional_int("seed", seed, minimum=0))
    return check_int("max_new_tokens", max_new_tokens, minimum=1), config, check_stop(stop)


def check_messages(messages: Sequence[object]) -> list[dict[str, Any]]:
    """Chat messages: mappings with a known ``role`` and a str ``content``."""
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise EdgegenError(f"chat message {i} must be a dict with 'role' and 'content', got {_type_name(message)}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise EdgegenError(f"chat message {i} has role {role!r}: known roles are {', '.join(sorted(CHAT_ROLES))}")
        check_text(f"chat message {i}'s content", content)
        out.append(dict(message))
    return out


def prompt_kind(prompt: object) -> str:
    """'text', 'messages' or 'token_ids'; a prompt of any other shape is an EdgegenError."""
    if isinstance(prompt, str):
        check_text("prompt", prompt)
        if not prompt.strip():
            raise EdgegenError("prompt is empty")
        return "text"
    if isinstance(prompt, bytes | bytearray | memoryview) or not isinstance(prompt, Sequence):
        raise EdgegenError("prompt must be a string, a list of chat messages or a list of token ids, "
                           f"got {_type_name(prompt)}")
    if len(prompt) == 0:
        raise EdgegenError("prompt is empty")
    if all(isinstance(m, Mapping) for m in prompt):
        return "messages"
    if all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in prompt):
        return "token_ids"
    raise EdgegenError("prompt must be a string, a list of chat messages or a list of token ids (ints, not bools)")
