"""Generation events -> OpenAI response objects: whole responses, or stream chunks (server-sent events)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from edgegen.serve.generation import Finished, Piece
from edgegen.serve.tool_formats import ToolFormat
from edgegen.serve.tools import CallReader

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # edgegen's reasons -> OpenAI's


class _Choice:
    """One choice's text as it grows. With tools, its text goes through a CallReader: a call is sent as
    ``tool_calls`` once complete, text that is (or may become) a call is held back."""

    def __init__(self, fmt: ToolFormat | None) -> None:
        self.text = ""
        self.tokens = 0
        self.finish: str | None = None
        self.reader = CallReader(fmt) if fmt is not None else None

    def push(self, piece: str) -> tuple[str, list[dict[str, Any]]]:
        """Add text: the content that may be streamed now, and the calls it completed."""
        self.text += piece
        return self.reader.push(piece) if self.reader is not None else (piece, [])

    def end(self, event: Finished) -> tuple[str, list[dict[str, Any]]]:
        """The answer is complete: content not streamed yet and calls not sent yet."""
        self.tokens, self.finish = event.tokens, FINISH.get(event.finish_reason, "stop")
        if self.reader is None:
            return "", []
        rest, calls = self.reader.end()
        if self.reader.calls:
            self.finish = "tool_calls"
        return rest, calls

    @property
    def content(self) -> str | None:
        return self.reader.content if self.reader is not None else self.text

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self.reader.calls if self.reader is not None else []


class Shaper:
    """Builds one request's response (chat or text completion) from its events."""

    def __init__(self, chat: bool, model: str, n: int, calls: ToolFormat | None, include_usage: bool = False) -> None:
        """``calls``: the model's tool-call format when the request has tools (its answers are read for calls)."""
        self.chat, self.model, self.include_usage = chat, model, include_usage
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.choices = [_Choice(calls) for _ in range(n)]
        self.prompt_tokens = 0

    # -- streaming ---------------------------------------------------------------------------------
    def chunks(self, event: Piece | Finished) -> list[dict[str, Any]]:
        """Stream chunks for one event (OpenAI's shape: a call as a delta with its index, id and name, then
        one with its arguments)."""
        choice = self.choices[event.index]
        first = choice.text == "" and self.chat
        content, calls = choice.push(event.text) if isinstance(event, Piece) else choice.end(event)
        out = []
        if content or (first and isinstance(event, Piece)):
            delta = {"role": "assistant", "content": content} if first else {"content": content}
            out.append(self._chunk(event.index, delta if self.chat else content, None))
        for call in calls:
            k = choice.calls.index(call)
            head = {"index": k, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}
            out.append(self._chunk(event.index, {"tool_calls": [head]}, None))
            arguments = {"index": k, "function": {"arguments": call["function"]["arguments"]}}
            out.append(self._chunk(event.index, {"tool_calls": [arguments]}, None))
        if isinstance(event, Finished):
            out.append(self._chunk(event.index, {} if self.chat else "", choice.finish))
        return out

    def _chunk(self, index: int, delta: Any, finish: str | None) -> dict[str, Any]:
        if self.chat:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": delta, "logprobs": None, "finish_reason": finish}
            kind = "text_completion"
        chunk = {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [choice]}
        if self.include_usage:  # OpenAI's shape: null in every chunk but the last
            chunk["usage"] = None
        return chunk

    def usage_chunk(self) -> dict[str, Any]:
        """The last chunk of a stream with stream_options.include_usage: no choices, the usage."""
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [], "usage": self.usage()}

    # -- whole response ----------------------------------------------------------------------------
    def add(self, event: Piece | Finished) -> None:
        choice = self.choices[event.index]
        if isinstance(event, Piece):
            choice.push(event.text)
        else:
            choice.end(event)

    def response(self) -> dict[str, Any]:
        choices = []
        for i, choice in enumerate(self.choices):
            if self.chat:
                message: dict[str, Any] = {"role": "assistant", "content": choice.content}
                if choice.calls:
                    message["tool_calls"] = choice.calls
                choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": choice.finish})
            else:
                choices.append({"index": i, "text": choice.text, "logprobs": None, "finish_reason": choice.finish})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, "usage": self.usage()}

    def usage(self) -> dict[str, int]:
        completion = sum(c.tokens for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}
