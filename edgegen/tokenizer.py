"""Tokenization (HF ``tokenizers``), chat templates (jinja2) and streaming-safe detokenization."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from edgegen.errors import EdgegenError
from edgegen.manifest import Manifest

Message = dict[str, str]


def _raise(message: str) -> None:
    raise TemplateError(message)


class TextTokenizer:
    """Text <-> token ids for one exported model, with its chat template and BOS rule."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.manifest = manifest
        self._tok = Tokenizer.from_file(str(Path(folder) / manifest.tokenizer))
        self._template = None
        if manifest.chat_template and (Path(folder) / manifest.chat_template).is_file():
            # Same environment settings transformers uses, so templates render identically.
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals.update(raise_exception=_raise, strftime_now=lambda f: datetime.now().strftime(f))
            self._template = env.from_string((Path(folder) / manifest.chat_template).read_text())
        bos = manifest.bos_token_id
        self.bos_token = self._tok.id_to_token(bos) if bos is not None else ""
        self.eos_token = self._tok.id_to_token(manifest.eos_token_ids[0]) if manifest.eos_token_ids else ""

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def render_chat(self, messages: Sequence[Message]) -> str:
        if self._template is None:
            raise EdgegenError(f"model '{self.manifest.name}' has no chat template: use raw mode")
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=True,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as e:
            raise EdgegenError(f"chat template failed: {e}") from None

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

    def encode_prompt(self, prompt: str | Sequence[Message], chat: bool) -> list[int]:
        if isinstance(prompt, str):
            if not chat:
                return self.encode(prompt)
            prompt = [{"role": "user", "content": prompt}]
        return self.encode(self.render_chat(prompt))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def vocabulary(self) -> dict[str, int]:
        """Token string -> id, special tokens included (drafter compatibility)."""
        return self._tok.get_vocab(with_added_tokens=True)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)


class StreamDecoder:
    """Turns a growing list of token ids into text pieces for streaming.

    Decoding token by token breaks multi-byte characters (byte-level BPE) and drops the leading
    spaces of SentencePiece pieces. Instead, decode a short window and emit only the new suffix once
    it no longer ends in an incomplete character (U+FFFD).
    """

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # window start: text before it has been emitted and is stable
        self._read = 0  # ids up to here have been emitted

    def push(self, ids: Sequence[int]) -> str:
        """Add tokens; return the text that is now final (possibly '')."""
        self._ids.extend(ids)
        before = self._tokenizer.decode(self._ids[self._prefix : self._read])
        after = self._tokenizer.decode(self._ids[self._prefix :])
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def flush(self) -> str:
        """Whatever is still held back at the end of generation."""
        before = self._tokenizer.decode(self._ids[self._prefix : self._read])
        after = self._tokenizer.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]
