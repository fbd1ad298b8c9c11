"""What a line of an ``edgegen batch`` input is (a checked request) and what it becomes (an output record).

Shared by the local runs (batch.py) and the Ray actors (batch_ray.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegen.arguments import check_bool, check_generation, check_messages, check_text, prompt_kind
from edgegen.errors import EdgegenError

# per-line options (and run defaults) passed to Generator.generate
LINE_OPTIONS = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "stop",
                "strategy", "chat", "ignore_eos")
LINE_KEYS = frozenset({"id", "prompt", "messages", *LINE_OPTIONS})
GENERATE_DEFAULTS: dict[str, Any] = {"max_new_tokens": 256, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
                                     "repetition_penalty": 1.0, "seed": None, "stop": [], "strategy": "auto",
                                     "chat": True, "ignore_eos": False}


@dataclass(frozen=True)
class BatchRequest:
    """One input line: its 0-based position, its id (or None), the prompt and the generate() arguments."""

    index: int
    id: Any
    prompt: Any  # text, chat messages or token ids
    options: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({"index": self.index, "id": self.id, "prompt": self.prompt, "options": self.options})

    @staticmethod
    def from_json(text: str) -> BatchRequest:
        d = json.loads(text)
        return BatchRequest(d["index"], d["id"], d["prompt"], d["options"])


def parse_request(index: int, obj: object, defaults: dict[str, Any]) -> BatchRequest:
    """One input line's object as a checked request (``defaults`` fill the options it leaves out)."""
    if not isinstance(obj, dict):
        raise EdgegenError(f"must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - LINE_KEYS)
    if unknown:
        raise EdgegenError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(LINE_KEYS))})")
    if ("prompt" in obj) == ("messages" in obj):
        raise EdgegenError("needs exactly one of 'prompt' (text or token ids) or 'messages' (chat)")
    prompt = obj["prompt"] if "prompt" in obj else obj["messages"]
    kind = prompt_kind(prompt)
    if "messages" in obj and kind != "messages":
        raise EdgegenError("'messages' must be a list of {role, content} objects")
    options = {**GENERATE_DEFAULTS, **defaults, **{k: obj[k] for k in LINE_OPTIONS if k in obj}}
    _, _, stops = check_generation(options["max_new_tokens"], options["temperature"], options["top_k"],
                                   options["top_p"], options["repetition_penalty"], options["seed"], options["stop"])
    options["stop"] = stops
    check_text("strategy", options["strategy"])
    check_bool("chat", options["chat"])
    check_bool("ignore_eos", options["ignore_eos"])
    if kind == "messages":
        check_messages(prompt)
    return BatchRequest(index, obj.get("id"), prompt, options)


def read_requests(path: str | Path, defaults: dict[str, Any] | None = None) -> list[BatchRequest]:
    """Every request of a JSONL file (blank lines skipped), checked; a bad line is one EdgegenError with its number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EdgegenError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise EdgegenError(f"{path} is not UTF-8 text") from None
    requests: list[BatchRequest] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            requests.append(parse_request(len(requests), json.loads(line), defaults or {}))
        except json.JSONDecodeError as e:
            raise EdgegenError(f"{path} line {number}: not JSON ({e.msg} at column {e.colno})") from None
        except EdgegenError as e:
            raise EdgegenError(f"{path} line {number}: {e}") from None
    if not requests:
        raise EdgegenError(f"{path} holds no requests")
    return requests


def load_worker(load_args: dict[str, Any]) -> Any:
    """The Generator a worker (this process, a pool process, a Ray actor) runs its requests on: without the
    prompt cache, so that with generate_record's empty cache every line is computed alike in any layout."""
    from edgegen.api import load

    return load(**{"prompt_cache_mb": 0, **load_args})


def generate_record(gen: Any, request: BatchRequest) -> dict[str, Any]:
    """One request run on a loaded Generator: its output record (an ``error`` field if generation refused it).

    Every request starts from an empty KV cache: reusing the previous line's prefix would split the prompt's
    forward differently (other kernels, other rounding), so a line's tokens would depend on which lines its
    worker ran before, and a pool's or Ray's output could differ from one process's where sampling or a
    near-tie argmax sits on that rounding."""
    head = {"index": request.index, "id": request.id}
    gen.session.reset()
    try:
        result = gen.generate(request.prompt, **request.options)
    except EdgegenError as e:
        return {**head, "error": str(e)}
    return {**head, "text": result.text, "token_ids": result.token_ids, "finish_reason": result.finish_reason,
            "stats": {k: v for k, v in result.to_dict()["stats"].items()}}
