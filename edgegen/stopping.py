"""Stop rules: one generated sequence's tokens -> its final text under EOS, stop strings and length."""

from __future__ import annotations

from collections.abc import Iterable

from edgegen.tokenizer import StreamDecoder, TextTokenizer


class TextOutput:
    """One generated sequence's tokens -> final text under the stopping rules (EOS, stop strings, length).

    Text that may still become a stop string is held back until a later token rules it out.
    """

    def __init__(self, tokenizer: TextTokenizer, eos: set[int] | frozenset[int], stop: list[str],
                 max_tokens: int) -> None:
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
            if self._stop and (cut := find_stop(self.text, self._stop, self._emitted - self._hold)) is not None:
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


def find_stop(text: str, stop: list[str], search_from: int) -> int | None:
    """Index where the earliest stop string starts in text (searching only text not yet emitted)."""
    hits = [i for s in stop if (i := text.find(s, max(0, search_from))) >= 0]
    return min(hits) if hits else None
