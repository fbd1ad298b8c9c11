"""Tool-call formats: how each model family writes a call, what the grammar makes it write, and the
reading of its text back into calls.

A format is data: the syntaxes a call may take in decoded text (an opener pattern and a reader of
what follows it), the JSON key of the arguments, the call the grammar writes (pieces around the
call's JSON; a piece that is a special token of the model is forced as that token), the instructions
and tool-result markup used when the chat template does not render tools. ``FORMATS`` is the one
registry: ``detect`` picks the first format whose marker is in the chat template or the vocabulary.

Special tokens (Mistral's ``[TOOL_CALLS]``, Phi-4-mini's ``<|tool_call|>``, Llama's ``<|python_tag|>``)
vanish from decoded text, so each of those formats also reads its bare JSON payload. No installed
library covers these formats without a heavy dependency (transformers' response-schema parser and
its serving parser, openvino-genai's Llama 3 parsers): the readers are the standard library's JSON
decoder and ``ast``.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

ARGUMENT_KEYS = ("arguments", "parameters")
# how the grammar writes a call's JSON: json.dumps' separators, as chat templates render calls (tojson)
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Found:
    """Calls read from ``text[start:end]``."""

    start: int
    end: int
    calls: tuple[Call, ...]


# A reader gets the text, the opener's match and whether the text is final; it returns the end of
# what it read and the calls, or None (malformed, or not complete yet).
Reader = Callable[[str, "re.Match[str]", bool], "tuple[int, list[Call]] | None"]


@dataclass(frozen=True)
class Syntax:
    literal: str  # the opener as written (a text ending in a prefix of it is held back while streaming)
    pattern: str  # the opener as a regex (also excluded from the grammar's plain-text answers)
    read: Reader


# -- readers ---------------------------------------------------------------------------------------
def calls_of(value: Any) -> list[Call] | None:
    """The calls in a decoded JSON value: one {"name", "arguments"|"parameters"} object or a list of them."""
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            return None
        arguments = next((item[k] for k in ARGUMENT_KEYS if k in item), {})
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append(Call(item["name"], arguments))
    return calls or None


def _json_at(text: str, i: int) -> tuple[int, list[Call]] | None:
    while i < len(text) and text[i].isspace():
        i += 1
    try:
        value, end = _DECODER.raw_decode(text, i)
    except json.JSONDecodeError:
        return None
    calls = calls_of(value)
    return (end, calls) if calls else None


def _close(text: str, i: int, close: str, final: bool) -> int | None:
    """The index after an optional ``close`` tag at ``i``; None while the tag may still be arriving."""
    rest = text[i:].lstrip()
    if rest.startswith(close):
        return len(text) - len(rest) + len(close)
    if rest and close.startswith(rest) and not final:
        return None
    return i


def json_value(text: str, match: re.Match[str], final: bool) -> tuple[int, list[Call]] | None:
    """A JSON call object or array starting where the opener matched."""
    return _json_at(text, match.start())


def after_marker(close: str = "") -> Reader:
    """A JSON call object or array after a marker, then an optional ``close`` tag."""

    def read(text: str, match: re.Match[str], final: bool) -> tuple[int, list[Call]] | None:
        got = _json_at(text, match.end())
        if got is None or not close:
            return got
        end = _close(text, got[0], close, final)
        return None if end is None else (end, got[1])

    return read


def tagged(close: str) -> Reader:
    """A JSON call between the opener and ``close`` (Hermes: ``<tool_call>{...}</tool_call>``)."""

    def read(text: str, match: re.Match[str], final: bool) -> tuple[int, list[Call]] | None:
        end = text.find(close, match.end())
        if end < 0:  # unclosed: only a final text that ends with the JSON is read
            got = _json_at(text, match.end()) if final else None
            return got if got is not None and not text[got[0]:].strip() else None
        try:
            calls = calls_of(json.loads(text[match.end() : end]))
        except json.JSONDecodeError:
            return None
        return (end + len(close), calls) if calls else None

    return read


def python_calls(source: str) -> list[Call] | None:
    """Calls written as Python: ``f(a=1)``, ``print(f(a=1))`` or ``[f(a=1), g(b="x")]``; keyword
    arguments with literal values only (parsed by ``ast``, never evaluated)."""
    try:
        tree = ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        return None
    nodes = tree.elts if isinstance(tree, ast.List | ast.Tuple) else [tree]
    calls = []
    for node in nodes:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print" \
                and len(node.args) == 1:
            node = node.args[0]
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.args:
            return None
        try:
            arguments = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
        except ValueError:
            return None
        if len(arguments) != len(node.keywords):
            return None
        calls.append(Call(node.func.id, arguments))
    return calls or None


def fenced(text: str, match: re.Match[str], final: bool) -> tuple[int, list[Call]] | None:
    """A fenced block: ```tool_code (Python calls) or ```json (a JSON call)."""
    end = text.find("```", match.end())
    if end < 0:
        return None
    body = text[match.end() : end]
    if match.group(0).startswith("```json"):
        try:
            calls = calls_of(json.loads(body))
        except json.JSONDecodeError:
            return None
    else:
        calls = python_calls(body)
    return (end + 3, calls) if calls else None


def _marker(literal: str, read: Reader) -> Syntax:
    return Syntax(literal, re.escape(literal), read)


JSON_OBJECT = Syntax('{"name"', r'\{\s*"name"\s*:', json_value)
JSON_ARRAY = Syntax('[{"name"', r'\[\s*\{\s*"name"\s*:', json_value)
TOOL_CODE = Syntax("```tool_code", r"```tool_code[ \t]*\n", fenced)  # Gemma's fenced blocks
FENCED_JSON = Syntax("```json", r"```json[ \t]*\n", fenced)


# -- formats ---------------------------------------------------------------------------------------
def _openai_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def _mistral_id() -> str:  # Mistral's templates refuse any id that is not 9 letters or digits
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))


@dataclass(frozen=True)
class ToolFormat:
    name: str
    markers: tuple[str, ...]  # detection: any of them in the chat template or the vocabulary
    syntaxes: tuple[Syntax, ...]
    arguments_key: str  # the key the grammar writes the arguments under
    call_open: tuple[str, ...]  # pieces the grammar writes before the call JSON (special tokens forced)
    call_close: tuple[str, ...]
    array: bool  # the grammar writes the call inside [ ]
    instructions: str  # system text when the template does not render tools ({tools}: the tool list)
    result: str  # a tool result when the template does not render tools ({content})
    tool_list: Callable[[list[dict[str, Any]]], str] = json.dumps  # the tools in ``instructions``
    system_tools: bool = False  # the template reads the tools as a JSON string in the system message
    call_id: Callable[[], str] = _openai_id

    def detect(self, template: str, has_token: Callable[[str], bool]) -> bool:
        return any(m in template or has_token(m) for m in self.markers)

    # -- reading ---------------------------------------------------------------------------------
    def _next(self, text: str, start: int) -> tuple[Syntax, re.Match[str]] | None:
        best = None
        for syntax in self.syntaxes:
            match = re.compile(syntax.pattern).search(text, start)
            if match and (best is None or match.start() < best[1].start()):
                best = (syntax, match)
        return best

    def scan(self, text: str, final: bool = True) -> list[Found]:
        """The calls in ``text``, in order. A malformed call is skipped (it stays text); while streaming
        (``final`` False) reading stops at the first call that cannot be read yet."""
        found: list[Found] = []
        i = 0
        while (hit := self._next(text, i)) is not None:
            syntax, match = hit
            got = syntax.read(text, match, final)
            if got is None:
                if not final:
                    break
                i = match.start() + 1
                continue
            found.append(Found(match.start(), got[0], tuple(got[1])))
            i = got[0]
        return found

    def parse(self, text: str) -> tuple[str | None, list[Call]]:
        """A finished answer: its text outside the calls (None when there is none) and its calls."""
        found = self.scan(text)
        return outside(text, found), [c for f in found for c in f.calls]

    def hold_from(self, text: str) -> int:
        """Where a call begins or may begin in ``text``: text from here is not streamed as content yet."""
        hit = self._next(text, 0)
        start = hit[1].start() if hit else len(text)
        for i in range(max(0, start - max(len(s.literal) for s in self.syntaxes)), start):
            tail = "".join(text[i:].split())
            if any(s.literal.startswith(tail) and tail[:1] == s.literal[0] for s in self.syntaxes):
                return i
        return start

    # -- writing ---------------------------------------------------------------------------------
    def write(self, calls: Sequence[Call]) -> str:
        """Calls as the model writes them (an earlier turn's calls, when the template cannot)."""
        objects = [json.dumps({"name": c.name, self.arguments_key: c.arguments}) for c in calls]
        open_, close = "".join(self.call_open), "".join(self.call_close)
        if self.array:
            return f"{open_}[{', '.join(objects)}]{close}"
        return "\n".join(f"{open_}{o}{close}" for o in objects)

    def grammar(self, tools: Sequence[tuple[str, dict[str, Any]]], auto: bool, special: dict[str, int]) -> str:
        """llguidance Lark: one call of one of ``tools`` (name, parameters schema), its arguments following
        the schema; with ``auto`` also a plain-text answer in which no call can begin."""
        schema = {"anyOf": [{"type": "object", "properties": {"name": {"const": name}, self.arguments_key: params},
                             "required": ["name", self.arguments_key], "additionalProperties": False}
                            for name, params in tools], "x-guidance": JSON_STYLE}
        body = f"%json {json.dumps(schema)}"
        if self.array:
            body = f'"[" {body} "]"'
        opening = [_lark_piece(p, special) for p in self.call_open]
        rest = " ".join([body, *(_lark_piece(p, special) for p in self.call_close)])
        call = " ".join([*opening, rest])
        if not auto:
            return f"start: {call}\n"
        # Plain text holds no call's opener and does not start with the call's first character (llguidance's
        # lexer cannot hand a text that began like the call over to it). Text may lead into a call: up to a
        # special token (which no text contains), or a text lexeme that ends with the literal marker.
        openers = "|".join(f"(?:{s.pattern})" for s in self.syntaxes)
        no_call = f"~/(?s:.*)(?:{openers})(?s:.*)/"
        if not self.call_open:  # bare JSON: no text before it
            return f"start: {call} | TEXT\nTEXT: /[^{re.escape('[' if self.array else '{')}](?s:.*)/ & {no_call}\n"
        marker = self.call_open[0]
        if marker in special:
            return f"start: {call} | TEXT | TEXT {call}\nTEXT: /(?s:.+)/ & {no_call}\n"
        first = re.escape(marker[0])
        lead = f"/[^{first}](?s:.*){re.escape(marker)}/ & ~/(?s:.*)(?:{openers})(?s:.+)/"
        rest = " ".join([*opening[1:], rest])
        return f"start: {call} | TEXT | LEAD {rest}\nTEXT: /[^{first}](?s:.*)/ & {no_call}\nLEAD: {lead}\n"


def _lark_piece(text: str, special: dict[str, int]) -> str:
    """A literal of the grammar: a special token by its id (its text cannot be typed), else the string."""
    return f"<[{special[text]}]>" if text in special else json.dumps(text, ensure_ascii=False)


def outside(text: str, found: Sequence[Found]) -> str | None:
    """The text around the calls; None when it is only blanks and separators."""
    pieces, i = [], 0
    for f in found:
        pieces.append(text[i : f.start])
        i = f.end
    pieces.append(text[i:])
    content = "".join(pieces)
    return content if content.strip(" \t\r\n;,") else None


HERMES = ToolFormat(
    "hermes", markers=("<tool_call>",), syntaxes=(_marker("<tool_call>", tagged("</tool_call>")),),
    arguments_key="arguments", call_open=("<tool_call>", "\n"), call_close=("\n", "</tool_call>"), array=False,
    instructions="# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided "
                 "with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\nFor each "
                 "function call, return a json object with function name and arguments within <tool_call>"
                 "</tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
                 "<args-json-object>}}\n</tool_call>",
    result="<tool_response>\n{content}\n</tool_response>", tool_list=lambda tools: "\n".join(map(json.dumps, tools)))
_NAME_PARAMETERS = '{{"name": function name, "parameters": dictionary of argument name and its value}}'
LLAMA3_JSON = ToolFormat(
    "llama3_json", markers=("<|python_tag|>",),
    syntaxes=(_marker("<|python_tag|>", after_marker()), JSON_OBJECT), arguments_key="parameters",
    call_open=(), call_close=(), array=False,
    instructions="Given the following functions, please respond with a JSON for a function call with its proper "
                 "arguments that best answers the given prompt.\n\n"
                 f"Respond in the format {_NAME_PARAMETERS}. Do not use variables.\n\n{{tools}}",
    result="{content}", tool_list=lambda tools: "".join(json.dumps(t, indent=4) + "\n\n" for t in tools))
MISTRAL = ToolFormat(
    "mistral", markers=("[TOOL_CALLS]",), syntaxes=(_marker("[TOOL_CALLS]", after_marker()), JSON_ARRAY),
    arguments_key="arguments", call_open=("[TOOL_CALLS]", " "), call_close=(), array=True,
    instructions="[AVAILABLE_TOOLS] {tools}[/AVAILABLE_TOOLS]\nTo call functions, answer "
                 '[TOOL_CALLS] [{{"name": <function-name>, "arguments": <args-json-object>}}].',
    result='[TOOL_RESULTS] {{"content": {content}}}[/TOOL_RESULTS]', call_id=_mistral_id)
PHI4_MINI = ToolFormat(
    "phi4_mini", markers=("<|tool_call|>",),
    syntaxes=(_marker("<|tool_call|>", after_marker("<|/tool_call|>")), JSON_ARRAY), arguments_key="arguments",
    call_open=("<|tool_call|>",), call_close=("<|/tool_call|>",), array=True,
    instructions="<|tool|>{tools}<|/tool|>\nTo call functions, answer "
                 '<|tool_call|>[{{"name": <function-name>, "arguments": <args-json-object>}}]<|/tool_call|>.',
    result="{content}", system_tools=True)
GEMMA = ToolFormat(
    "gemma", markers=("<start_of_turn>",), syntaxes=(TOOL_CODE, FENCED_JSON, JSON_OBJECT), arguments_key="parameters",
    call_open=(), call_close=(), array=False,
    instructions="You have access to functions. If you decide to invoke any of the function(s), you MUST put it in "
                 f"the format of\n{_NAME_PARAMETERS}\n\nYou SHOULD NOT include any other text in the response if "
                 "you call a function\n{tools}",
    result="```tool_output\n{content}\n```")

FORMATS = (MISTRAL, PHI4_MINI, LLAMA3_JSON, HERMES, GEMMA)  # first match wins; none matches: HERMES
BY_NAME = {f.name: f for f in FORMATS}


def detect(template: str | None, has_token: Callable[[str], bool]) -> ToolFormat:
    """The call format of a model, from its chat template source and its vocabulary."""
    return next((f for f in FORMATS if f.detect(template or "", has_token)), HERMES)
