"""Generation events -> OpenAI response objects: whole responses, or stream chunks (server-sent events)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from edgegen.serve import tools
from edgegen.serve.generation import Finished, Piece
from edgegen.serve.tools import ToolPlan

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # edgegen's reasons -> OpenAI's


class _Choice:
    """One choice's text as it grows. With tools, an answer that is (or may become) a call is held
    back: a call is complete JSON only at its end, where it becomes ``tool_calls``."""

    def __init__(self, plan: ToolPlan | None) -> None:
        self._plan = plan
        self.text = ""
        self._sent = 0  # characters of text already streamed as content
        self.tokens = 0
        self.finish: str | None = None
        self.call: dict[str, Any] | None = None

    def push(self, piece: str) -> str:
        """Add text; the content that may be streamed now."""
        self.text += piece
        if self._plan is not None and tools.may_be_call(self.text):
            return ""
        new, self._sent = self.text[self._sent :], len(self.text)
        return new

    def end(self, event: Finished) -> None:
        self.tokens, self.finish = event.tokens, FINISH.get(event.finish_reason, "stop")
        if self._plan is not None and tools.may_be_call(self.text):
            self.call = tools.parse_call(self.text)
            if self.call is not None:
                self.finish = "tool_calls"

    def rest(self) -> str:
        """Content not streamed yet, once ended (a held-back answer that is not a complete call)."""
        if self.call is not None:
            return ""
        new, self._sent = self.text[self._sent :], len(self.text)
        return new


class Shaper:
    """Builds one request's response (chat or text completion) from its events."""

    def __init__(self, chat: bool, model: str, n: int, plan: ToolPlan | None, include_usage: bool = False) -> None:
        self.chat, self.model, self.include_usage = chat, model, include_usage
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.choices = [_Choice(plan) for _ in range(n)]
        self.prompt_tokens = 0

    # -- streaming ---------------------------------------------------------------------------------
    def chunks(self, event: Piece | Finished) -> list[dict[str, Any]]:
        """Stream chunks for one event."""
        choice = self.choices[event.index]
        if isinstance(event, Piece):
            first = choice.text == "" and self.chat
            content = choice.push(event.text)
            if not content and not first:
                return []
            delta = {"role": "assistant", "content": content} if first else {"content": content}
            return [self._chunk(event.index, delta if self.chat else content, None)]
        choice.end(event)
        out = []
        if rest := choice.rest():
            out.append(self._chunk(event.index, {"content": rest} if self.chat else rest, None))
        if choice.call is not None:
            call = {"index": 0, **choice.call}
            out.append(self._chunk(event.index, {"tool_calls": [call]}, None))
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
                message: dict[str, Any] = {"role": "assistant", "content": None if choice.call else choice.text}
                if choice.call is not None:
                    message["tool_calls"] = [choice.call]
                choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": choice.finish})
            else:
                choices.append({"index": i, "text": choice.text, "logprobs": None, "finish_reason": choice.finish})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, "usage": self.usage()}

    def usage(self) -> dict[str, int]:
        completion = sum(c.tokens for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}
