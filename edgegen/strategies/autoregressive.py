"""Autoregressive decoding: one target forward per token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from edgegen.strategies.base import DecodeRequest, Strategy, prefill, step


class Autoregressive(Strategy):
    name: ClassVar[str] = "ar"
    takes_constraint: ClassVar[bool] = True  # every token is a Sampler pick

    def decode(self, request: DecodeRequest) -> Iterator[list[int]]:
        history = list(request.prompt_ids)  # the repetition penalty sees prompt and output
        logits = prefill(request)
        while True:
            token = request.sampler.pick(logits, history)
            history.append(token)
            yield [token]
            logits = step(request, [token])[0][-1]
