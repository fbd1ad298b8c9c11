"""Talk to `edgegen serve` with the official `openai` package: a streamed chat, a JSON extraction, a tool call
and its result sent back for the answer.

    edgegen serve &                      # http://127.0.0.1:8000/v1, the default model
    python examples/serve_client.py      # or: python examples/serve_client.py http://127.0.0.1:8000/v1
"""

import json
import sys

from openai import OpenAI

CONTACT = {  # the fields to extract; the server constrains the answer to this schema (llguidance)
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 40}, "city": {"type": "string", "maxLength": 40},
                   "age": {"type": "integer", "minimum": 0, "maximum": 130}},
    "required": ["name", "city", "age"], "additionalProperties": False,
}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"], "additionalProperties": False}}}


def main() -> None:
    client = OpenAI(base_url=sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/v1", api_key="unused")
    model = client.models.list().data[0].id

    print("--- chat (streamed)")
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name three rivers."}],
                                            max_tokens=64, temperature=0, stream=True)
    for chunk in stream:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()

    print("--- JSON extraction (always parses, follows the schema)")
    text = "Maria Lopez, 34, moved from Madrid to Toronto last spring."
    reply = client.chat.completions.create(
        model=model, max_tokens=80, temperature=0,
        messages=[{"role": "user", "content": f"Extract name, current city and age as JSON: {text}"}],
        response_format={"type": "json_schema", "json_schema": {"name": "contact", "schema": CONTACT}})
    print(json.loads(reply.choices[0].message.content))

    print("--- tool call (in the model's own call format, read back into tool_calls)")
    messages = [{"role": "user", "content": "Do I need an umbrella in Dublin today?"}]
    reply = client.chat.completions.create(model=model, max_tokens=60, temperature=0, tools=[WEATHER_TOOL],
                                           tool_choice="required", messages=messages)
    message = reply.choices[0].message
    messages.append(message.model_dump(exclude_none=True))
    for call in message.tool_calls or []:
        print(call.function.name, json.loads(call.function.arguments))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "light rain, 11 degrees"})
    answer = client.chat.completions.create(model=model, max_tokens=40, temperature=0, tools=[WEATHER_TOOL],
                                            tool_choice="none", messages=messages)
    print(answer.choices[0].message.content)


if __name__ == "__main__":
    main()
