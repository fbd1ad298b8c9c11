"""Tokenization (HF ``tokenizers``), chat templates (jinja2, sandboxed) and streaming-safe detokenization."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer, decoders

from edgegen.errors import EdgegenError
from edgegen.manifest import Manifest

Message = dict[str, str]

# A chat template comes with the model folder (perhaps from the internet): its rendering is bounded.
TEMPLATE_MAX_LINES = 200_000  # template lines executed per render (loops of any kind; a 1000-turn chat: ~10k)
TEMPLATE_MAX_CHARS = 1_000_000  # characters of rendered prompt
_TEMPLATE_FILE = "<template>"  # the file name jinja2 gives a template's compiled code


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """transformers' tojson: plain json.dumps (jinja2's own escapes HTML and sorts keys, so a tool list
    would render differently from what the model was trained on)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox (no attribute escapes, no mutation of inputs) plus size limits on ``*`` and ``**``,
    which could otherwise build a huge string or number in one step that no line count sees."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 1000:
            raise TemplateError("exponent too large")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > TEMPLATE_MAX_CHARS:
                    raise TemplateError("repetition too large")
        return super().call_binop(context, operator, left, right)


class _LineBudget:
    """Counts the lines a template's code executes (a trace on template frames only) and stops it past
    TEMPLATE_MAX_LINES: every loop, however written, is bounded."""

    def __init__(self) -> None:
        self.left = TEMPLATE_MAX_LINES

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code.co_filename != _TEMPLATE_FILE:
            return None  # library code runs untraced
        return self._line

    def _line(self, frame: FrameType, event: str, arg: object) -> Any:
        if event == "line":
            self.left -= 1
            if self.left < 0:
                raise TemplateError(f"the template ran more than {TEMPLATE_MAX_LINES:,} steps")
        return self._line


def _bounded_render(pieces: Iterator[str]) -> str:
    """Join a template's output pieces, stopping a render that runs too long or writes too much."""
    previous = sys.gettrace()
    sys.settrace(_LineBudget())
    try:
        out, size = [], 0
        for piece in pieces:
            size += len(piece)
            if size > TEMPLATE_MAX_CHARS:
                raise TemplateError(f"the rendered prompt exceeds {TEMPLATE_MAX_CHARS:,} characters")
            out.append(piece)
        return "".join(out)
    finally:
        sys.settrace(previous)


class TextTokenizer:
    """Text <-> token ids for one exported model, with its chat template and BOS rule."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.manifest = manifest
        path = Path(folder) / manifest.tokenizer
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise EdgegenError(f"cannot read the tokenizer {path}: {reason}") from None
        self._template = None
        self.chat_template: str | None = None  # the template's source (serve reads how it handles tools)
        template = Path(folder) / manifest.chat_template if manifest.chat_template else None
        if template is not None and template.is_file():
            # Same environment settings transformers uses, so templates render identically.
            env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
            env.globals.update(raise_exception=_raise, strftime_now=lambda f: datetime.now().strftime(f))
            env.filters["tojson"] = _tojson
            try:
                self.chat_template = template.read_text(encoding="utf-8")
                self._template = env.from_string(self.chat_template)
            except (TemplateError, UnicodeDecodeError) as e:
                raise EdgegenError(f"chat template {template} is invalid: {e}") from None
        bos = manifest.bos_token_id
        self.bos_token = self._tok.id_to_token(bos) if bos is not None else ""
        self.eos_token = self._tok.id_to_token(manifest.eos_token_ids[0]) if manifest.eos_token_ids else ""

    def render_chat(self, messages: Sequence[Message], tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt text of ``messages``; ``tools`` (OpenAI/HF tool dicts) go to the template as ``tools``."""
        if self._template is None:
            raise EdgegenError(f"model '{self.manifest.name}' has no chat template: use raw mode")
        extra = {"tools": tools} if tools is not None else {}
        try:
            return _bounded_render(self._template.generate(messages=list(messages), add_generation_prompt=True,
                                                           bos_token=self.bos_token, eos_token=self.eos_token,
                                                           **extra))
        except TemplateError as e:
            raise EdgegenError(f"chat template failed: {e}") from None
        except (RecursionError, MemoryError, ArithmeticError, TypeError, ValueError) as e:
            raise EdgegenError(f"chat template failed: {type(e).__name__}: {e}") from None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens written in the text (chat markup) are recognised.

        BOS is prepended only when the model wants it and the text does not already start with it
        (a chat template may write it).
        """
        ids = self._tok.encode(text, add_special_tokens=False).ids
        bos = self.manifest.bos_token_id
        if self.manifest.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def encode_prompt(self, prompt: str | Sequence[Message], chat: bool,
                      tools: list[dict[str, Any]] | None = None) -> list[int]:
        if isinstance(prompt, str):
            if not chat:
                return self.encode(prompt)
            prompt = [{"role": "user", "content": prompt}]
        return self.encode(self.render_chat(prompt, tools))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def vocabulary(self) -> dict[str, int]:
        """Token string -> id, special tokens included (drafter compatibility)."""
        return self._tok.get_vocab(with_added_tokens=True)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    @property
    def backend(self) -> Tokenizer:
        """The ``tokenizers`` Tokenizer (streaming decode steps through it)."""
        return self._tok


class StreamDecoder:
    """Turns a growing list of token ids into text pieces for streaming.

    Decoding token by token breaks multi-byte characters (byte-level BPE) and drops the leading
    spaces of SentencePiece pieces; tokenizers' DecodeStream handles both, holding text back until
    its character is complete. It has no end-of-stream flush, so ``flush`` decodes what it still
    holds (a character cut short by the end of generation) the one time it is needed.
    """

    _CONTEXT = 8  # tokens before the held ones: enough for the decoder's spacing rules at the join

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._tokenizer = tokenizer
        self._stream = decoders.DecodeStream(skip_special_tokens=True)
        self._ids: list[int] = []
        self._read = 0  # ids up to here have been emitted as text

    def push(self, ids: Sequence[int]) -> str:
        """Add tokens; return the text that is now final (possibly '')."""
        pieces = []
        for token in ids:
            self._ids.append(token)
            piece = self._stream.step(self._tokenizer.backend, token)
            if piece is not None:
                pieces.append(piece)
                self._read = len(self._ids)
        return "".join(pieces)

    def flush(self) -> str:
        """Whatever is still held back at the end of generation."""
        if self._read == len(self._ids):
            return ""
        start = max(0, self._read - self._CONTEXT)
        before = self._tokenizer.decode(self._ids[start : self._read])
        after = self._tokenizer.decode(self._ids[start:])
        self._read = len(self._ids)
        return after[len(before) :]
