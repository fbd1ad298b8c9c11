"""Tool calling: the tools shown to the model, a grammar that keeps its calls valid, calls parsed back.

The model is told (in the system message) to answer a call as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the Hermes / Qwen format). The
grammar (llguidance Lark with embedded JSON schemas) makes such a call the only possible output
(tool_choice "required" or a named function) or one of two (tool_choice "auto": a call, or plain
text that does not start with ``<``); the arguments always follow the chosen tool's schema.
One call per answer (parallel calls are not generated).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from edgegen.serve.errors import bad_param

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_COMPACT = {"whitespace_flexible": False}  # a small model pads JSON with newlines forever if it may


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


def system_text(plan: ToolPlan) -> str:
    """What the model is told about the tools (appended to the system message)."""
    specs = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                               "parameters": t.parameters}} for t in plan.callable]
    return ("You may call one of these functions. To call one, answer only with a JSON object "
            f'{{"name": <function name>, "arguments": <arguments object>}} inside {OPEN}{CLOSE} tags.\n'
            f"<tools>\n{json.dumps(specs)}\n</tools>")


def with_tools(messages: list[dict[str, str]], plan: ToolPlan) -> list[dict[str, str]]:
    """The messages with the tools described in the (first) system message."""
    text = system_text(plan)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def grammar(plan: ToolPlan) -> str:
    """The llguidance Lark grammar of the allowed answers."""
    from edgegen.grammar import require_llguidance

    schema = {"anyOf": [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                         "required": ["name", "arguments"], "additionalProperties": False} for t in plan.callable],
              "x-guidance": _COMPACT}
    rules = [f'call: "{OPEN}" call_json "{CLOSE}"', f"call_json: %json {json.dumps(schema)}"]
    if plan.choice == "auto":
        rules = ["start: call | text", *rules, r"text: /[^<][\s\S]*/"]
    else:
        rules = ["start: call", *rules]
    return require_llguidance().LLMatcher.grammar_from_lark("\n".join(rules) + "\n")


def may_be_call(text: str) -> bool:
    """Whether ``text`` (an answer's beginning) is, or may still become, a tool call."""
    return text.startswith(OPEN) or OPEN.startswith(text)


def parse_call(text: str) -> dict[str, Any] | None:
    """The OpenAI ``tool_calls`` entry of a complete call answer; None when it is not one (cut by length)."""
    if not (text.startswith(OPEN) and text.rstrip().endswith(CLOSE)):
        return None
    try:
        call = json.loads(text.strip()[len(OPEN) : -len(CLOSE)])
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))}}


def call_text(call: Any, where: str) -> str:
    """An earlier assistant tool call (OpenAI shape) as the model writes it."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad_param(where, f"{where}: each tool call needs function.name and function.arguments")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        raise bad_param(where, f"{where}: function.arguments must be a JSON string") from None
    return f"{OPEN}{json.dumps({'name': function['name'], 'arguments': parsed})}{CLOSE}"
