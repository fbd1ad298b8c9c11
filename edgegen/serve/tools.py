"""Tool calling: the request's tools, the model's prompt with them, the grammar of its calls, calls read back.

The model's call format (``tool_formats``: Hermes/Qwen, Llama 3 JSON, Mistral, Phi-4-mini, Gemma) is
detected once per model from its chat template and vocabulary. A template that renders tools (it
reads ``tools``) gets them as HF does: ``tools`` (a list of {"type": "function", "function": {...}}),
assistant messages with ``tool_calls`` (arguments as objects), tool results as role "tool" messages.
Otherwise the format's instructions go in the system message, earlier calls are written in the
format and tool results become user turns. The grammar (llguidance Lark with embedded JSON schemas)
makes a call of the format the only possible output (tool_choice "required" or a named function) or
one of the answers (tool_choice "auto": a call, plain text in which no call begins, or for formats with
a marker such text leading into a call); the arguments always follow the chosen tool's schema. One call
per answer is generated; the readers take several.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from edgegen.serve.errors import bad_param
from edgegen.serve.tool_formats import Call, Found, ToolFormat, detect, outside


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolPlan:
    tools: list[Tool]
    choice: str  # "auto" | "required" | a tool's name (forced)

    @property
    def callable(self) -> list[Tool]:
        """The tools the model may call under this tool_choice."""
        return self.tools if self.choice in ("auto", "required") else [t for t in self.tools if t.name == self.choice]

    def specs(self) -> list[dict[str, Any]]:
        """The callable tools as chat templates take them (OpenAI's / HF's shape)."""
        return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.parameters}} for t in self.callable]


def parse_tools(body: dict[str, Any]) -> ToolPlan | None:
    """The request's tools and tool_choice; None when there are none or tool_choice is "none"."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise bad_param("tool_choice", "tool_choice needs tools")
        return None
    if not isinstance(tools, list):
        raise bad_param("tools", "tools must be a list of {type: function, function: {...}} objects")
    parsed = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    if len({t.name for t in parsed}) != len(parsed):
        raise bad_param("tools", "tool names must be unique")
    if choice in (None, "auto", "required"):
        return ToolPlan(parsed, choice or "auto")
    if choice == "none":
        return None
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or name not in {t.name for t in parsed}:
        raise bad_param("tool_choice", "tool_choice must be none, auto, required or "
                        "{type: function, function: {name}} naming one of the tools")
    return ToolPlan(parsed, name)


def _tool(tool: Any, where: str) -> Tool:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise bad_param(where, f"{where} must be {{type: function, function: {{name, description, parameters}}}}")
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise bad_param(f"{where}.function.parameters", "parameters must be a JSON schema object")
    description = function.get("description") or ""
    return Tool(name, description if isinstance(description, str) else "", parameters)


@dataclass(frozen=True)
class ModelTools:
    """How one model takes tools: its call format, whether its template renders them, its special markers."""

    format: ToolFormat
    template_renders: bool
    special: dict[str, int] = field(default_factory=dict)  # marker text -> id, for markers that are special tokens


def model_tools(tokenizer: Any) -> ModelTools:
    """Detect the tool handling of a model from its ``TextTokenizer`` (chat template source, vocabulary)."""
    backend = tokenizer.backend
    template = tokenizer.chat_template or ""
    fmt = detect(template, lambda token: backend.token_to_id(token) is not None)
    specials = {t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    markers = {*fmt.call_open, *fmt.call_close}
    return ModelTools(fmt, re.search(r"\btools\b", template) is not None,
                      {m: specials[m] for m in markers if m in specials})


def chat_inputs(messages: list[dict[str, Any]], plan: ToolPlan | None,
                model: ModelTools) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and ``tools`` to render the prompt with (see the module docstring)."""
    fmt, specs = model.format, plan.specs() if plan is not None else None
    if model.template_renders and not fmt.system_tools:
        return messages, specs
    out: list[dict[str, Any]] = []
    after_result = False  # the previous message was a tool result: the next one joins its user turn
    for message in messages:
        is_result = message["role"] == "tool" and not model.template_renders
        if is_result:
            result = fmt.result.format(content=message["content"])
            if after_result:
                out[-1] = {"role": "user", "content": f"{out[-1]['content']}\n{result}"}
            else:
                out.append({"role": "user", "content": result})
        elif calls := message.get("tool_calls"):
            written = fmt.write([Call(c["function"]["name"], c["function"]["arguments"]) for c in calls])
            out.append({"role": "assistant", "content": (message.get("content") or "") + written})
        else:
            out.append(message)
        after_result = is_result
    if specs:
        out = _with_tools_in_system(out, fmt, specs, model.template_renders)
    return out, None


def _with_tools_in_system(messages: list[dict[str, Any]], fmt: ToolFormat, specs: list[dict[str, Any]],
                          template_renders: bool) -> list[dict[str, Any]]:
    """The tools in the (first) system message: as its ``tools`` field for a template that reads them there
    (Phi-4-mini), else as the format's instructions appended to its text."""
    has_system = bool(messages) and messages[0]["role"] == "system"
    first, rest = (messages[0], messages[1:]) if has_system else ({"role": "system", "content": ""}, messages)
    if template_renders:  # system_tools
        system = {**first, "tools": json.dumps([s["function"] for s in specs])}
    else:
        text = fmt.instructions.format(tools=fmt.tool_list(specs))
        system = {**first, "content": f"{first['content']}\n\n{text}" if first["content"] else text}
    return [system, *rest]


def grammar(plan: ToolPlan, model: ModelTools) -> str:
    """The llguidance grammar of the allowed answers (checked by llguidance before any generation)."""
    from edgegen.grammar import require_llguidance

    matcher = require_llguidance().LLMatcher
    text = model.format.grammar([(t.name, t.parameters) for t in plan.callable], plan.choice == "auto", model.special)
    lark = matcher.grammar_from_lark(text)
    problem = matcher.validate_grammar(lark)
    if problem and not problem.startswith("WARNING"):
        raise bad_param("tools", f"a tool's parameters are not a usable JSON schema: {' '.join(problem.split())}")
    return lark


def openai_call(call: Call, call_id: str) -> dict[str, Any]:
    """A ``tool_calls`` entry of OpenAI's response."""
    return {"id": call_id, "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}


class CallReader:
    """One answer's text as it grows: the content that may be streamed now, and the calls complete so far.

    Text from where a call begins (or may begin) is held back; a call is sent once it is complete.
    At the end, a held text that is no complete call is content after all (malformed calls stay text).
    """

    def __init__(self, fmt: ToolFormat) -> None:
        self.format = fmt
        self.text = ""
        self._sent = 0  # characters of text already streamed as content
        self.calls: list[dict[str, Any]] = []  # OpenAI tool_calls entries, in order
        self.content: str | None = None  # the whole content, once ended

    def push(self, piece: str) -> tuple[str, list[dict[str, Any]]]:
        """Add text: the content to stream now and the calls completed by it."""
        self.text += piece
        hold = self.format.hold_from(self.text)
        if not self.text[:hold].strip():
            hold = 0  # nothing but blanks before a call: not content
        new = self.text[self._sent : hold] if hold > self._sent else ""
        self._sent = max(self._sent, hold)
        if hold == len(self.text):  # no call begins: nothing to read
            return new, []
        return new, self._new_calls(self.format.scan(self.text, final=False))

    def end(self) -> tuple[str, list[dict[str, Any]]]:
        """The text is complete: the content not streamed yet and the calls not sent yet."""
        found = self.format.scan(self.text)
        self.content = outside(self.text, found)
        rest = (self.content or "")[self._sent :]
        return rest, self._new_calls(found)

    def _new_calls(self, found: list[Found]) -> list[dict[str, Any]]:
        calls = [c for f in found for c in f.calls]
        new = [openai_call(c, self.format.call_id()) for c in calls[len(self.calls) :]]
        self.calls.extend(new)
        return new


def request_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls`` (OpenAI shape, arguments a JSON string) with the arguments
    decoded, as chat templates take them."""
    if not isinstance(calls, list):
        raise bad_param(where, "tool_calls must be a list")
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_param(where, f"{where}[{i}]: each tool call needs function.name and function.arguments")
        arguments = function.get("arguments") or "{}"
        try:
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError:
            raise bad_param(where, f"{where}[{i}]: function.arguments must be a JSON string") from None
        if not isinstance(arguments, dict):
            raise bad_param(where, f"{where}[{i}]: function.arguments must encode a JSON object")
        out.append({"id": str(call.get("id") or ""), "type": "function",
                    "function": {"name": function["name"], "arguments": arguments}})
    return out
