"""Autoregressive decoding: one target forward per token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from edgegen.strategies.base import DecodeRequest, Strategy, prefill, step, step_top


class Autoregressive(Strategy):
    name: ClassVar[str] = "ar"
    takes_constraint: ClassVar[bool] = True  # every token is a Sampler pick

    def decode(self, request: DecodeRequest) -> Iterator[list[int]]:
        sampler = request.sampler
        history = list(request.prompt_ids)  # the repetition penalty sees prompt and output
        token = sampler.pick(prefill(request), history)
        while True:
            history.append(token)
            yield [token]
            if sampler.picks_argmax:  # the session picks (on its device where it can): no logits row is copied
                token = step_top(request, [token])[0].argmax[-1]
            else:
                token = sampler.pick(step(request, [token])[0][-1], history)
