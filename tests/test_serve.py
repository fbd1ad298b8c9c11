"""edgegen serve against the real int8 default model: OpenAI's shapes, constrained output, queue and disconnects.

In-process tests use Starlette's TestClient; the others start uvicorn on a free 127.0.0.1 port (closed
at the end of the module) and talk to it with the official ``openai`` client or httpx. Every request
is bounded (max_tokens); the Generator holds a 1024-token context so a too-long prompt is cheap to make.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import uvicorn
from starlette.testclient import TestClient

from edgegen.serve import create_app
from edgegen.serve.app import MAX_BODY

CONTEXT = 1024
ASK = [{"role": "user", "content": "Name three rivers."}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150},
                                           "city": {"type": "string", "maxLength": 24}},
          "required": ["name", "age", "city"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 32},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 32}},
                   "required": ["zone"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def gen(int8_model: Path) -> Any:
    import edgegen

    return edgegen.load(backend="onnxruntime", max_length=CONTEXT)  # int8_model: the default, in EDGEGEN_CACHE


@pytest.fixture(scope="module")
def client(gen: Any) -> Iterator[TestClient]:
    with TestClient(create_app(gen, max_queue=4)) as c:
        yield c


@contextmanager
def running(app: Any) -> Iterator[str]:
    """uvicorn serving ``app`` on a free localhost port, in a thread; stopped on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def server(gen: Any) -> Iterator[str]:
    with running(create_app(gen, max_queue=4)) as url:
        yield url


def _events(text: str) -> list[Any]:
    """The data of each server-sent event ([DONE] kept as the string)."""
    out = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _streamed_calls(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool calls of a streamed answer, its deltas merged by index as OpenAI's clients do (the first
    delta of a call has its id, type and name, later ones add to its arguments)."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for delta in chunk["choices"][0]["delta"].get("tool_calls", []):
            call = calls.setdefault(delta["index"], {"function": {"name": "", "arguments": ""}})
            call.update({k: delta[k] for k in ("id", "type") if k in delta})
            call["function"]["name"] += delta.get("function", {}).get("name", "")
            call["function"]["arguments"] += delta.get("function", {}).get("arguments", "")
    return [calls[i] for i in sorted(calls)]


def _error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in response.text
    if param is not None:
        assert error["param"] == param
    return error


# -- no model ----------------------------------------------------------------------------------------
def test_engine_runs_in_order_refuses_beyond_the_bound_and_skips_cancelled_jobs() -> None:
    import asyncio

    from edgegen.serve.engine import END, Engine
    from edgegen.serve.errors import ApiError

    release, ran = threading.Event(), []

    def work(name: str) -> Any:
        def run(job: Any) -> None:
            if name == "first":
                release.wait(timeout=30)
            ran.append(name)
            job.emit(name)
        return run

    async def scenario() -> list[Any]:
        engine = Engine(max_queue=2)
        jobs = [engine.submit(work(name)) for name in ("first", "second", "third")]  # 1 running + 2 waiting
        with pytest.raises(ApiError) as full:
            engine.submit(work("fourth"))
        assert full.value.status == 503 and int(full.value.headers["Retry-After"]) >= 1
        jobs[1].cancel()  # its client went away while it waited
        release.set()
        events = [[await job.next(), await job.next()] if i != 1 else [await job.next()] for i, job in enumerate(jobs)]
        state = engine.state()
        engine.close()
        assert events == [["first", END], [END], ["third", END]]
        return [state["completed"], state["cancelled"], state["running"], state["queued"]]

    assert asyncio.run(scenario()) == [2, 1, False, 0]
    assert ran == ["first", "third"]


def test_serve_command_line_errors_are_one_line() -> None:
    from click.testing import CliRunner

    from edgegen.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--max-queue", "-1"])
    assert result.exit_code != 0 and "max-queue" in result.output and "Traceback" not in result.output


def test_tool_and_request_checks_need_no_model() -> None:
    from edgegen.serve.errors import ApiError
    from edgegen.serve.protocol import parse_chat
    from edgegen.serve.tool_formats import HERMES, Call

    request = parse_chat({"messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "auto", "n": 2, "seed": 3,
                          "stop": "x", "top_k": 5, "max_completion_tokens": 9})
    assert request.tools is not None and request.tools.choice == "auto" and len(request.tools.callable) == 2
    assert (request.sampling.n, request.sampling.stop, request.sampling.max_tokens) == (2, ["x"], 9)
    assert parse_chat({"messages": ASK, "max_tokens": 3, "max_completion_tokens": 9}).sampling.max_tokens == 9
    assert parse_chat({"messages": ASK, "max_tokens": 3}).sampling.max_tokens == 3
    forced = parse_chat({"messages": ASK, "tools": [WEATHER, TIME],
                         "tool_choice": {"type": "function", "function": {"name": "get_time"}}})
    assert [t.name for t in forced.tools.callable] == ["get_time"]
    for bad in ({"messages": ASK, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
                {"messages": ASK, "tools": [WEATHER, WEATHER]}, {"messages": ASK, "tools": "get_weather"},
                {"messages": ASK, "stream_options": {"include_usage": True}},
                {"messages": ASK, "tools": [WEATHER], "response_format": {"type": "json_object"}}):
        with pytest.raises(ApiError) as error:
            parse_chat(bad)
        assert error.value.status == 400 and error.value.param
    _, calls = HERMES.parse('<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>')
    assert calls == [Call("get_time", {"zone": "UTC"})]
    assert HERMES.parse('<tool_call>{"name": "get_time", "argu')[1] == []  # cut by max_tokens: not a call


# -- in process --------------------------------------------------------------------------------------
def test_models_and_health(client: TestClient, gen: Any) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [gen.manifest.name]
    assert client.get(f"/v1/models/{gen.manifest.name}").json()["id"] == gen.manifest.name
    _error(client.get("/v1/models/nope"), 404, "model")
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["running"] is False and health["queued"] == 0


def test_chat_equals_the_python_api_and_counts_usage(client: TestClient, gen: Any) -> None:
    body = client.post("/v1/chat/completions", json={"model": gen.manifest.name, "messages": ASK, "max_tokens": 24,
                                                     "temperature": 0}).json()
    expected = gen.generate(ASK, max_new_tokens=24)
    (choice,) = body["choices"]
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == {"eos": "stop", "stop": "stop", "length": "length"}[expected.finish_reason]
    assert body["usage"] == {"prompt_tokens": len(expected.prompt_token_ids),
                             "completion_tokens": len(expected.token_ids),
                             "total_tokens": len(expected.prompt_token_ids) + len(expected.token_ids)}


def test_chat_stream_is_the_same_text_in_sse_chunks(client: TestClient) -> None:
    request = {"messages": ASK, "max_completion_tokens": 24, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=request).json()
    response = client.post("/v1/chat/completions",
                           json={**request, "stream": True, "stream_options": {"include_usage": True}})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    assert events[-1] == "[DONE]"
    *chunks, usage = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" and c["usage"] is None for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    plain = _events(client.post("/v1/chat/completions", json={**request, "stream": True}).text)
    assert plain[-1] == "[DONE]" and all("usage" not in c for c in plain[:-1])


def test_completions_raw_prompt_and_stop(client: TestClient, gen: Any) -> None:
    prompt = "def fibonacci(n):"
    body = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 20, "temperature": 0}).json()
    expected = gen.generate(prompt, max_new_tokens=20, chat=False)
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == expected.text
    assert body["usage"]["completion_tokens"] == len(expected.token_ids)
    stopped = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 20, "temperature": 0,
                                                   "stop": ["return"]}).json()["choices"][0]
    assert "return" in expected.text and stopped["text"] == expected.text[: expected.text.index("return")]
    assert stopped["finish_reason"] == "stop"
    chunks = _events(client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 20, "temperature": 0,
                                                          "stream": True}).text)
    assert chunks[-1] == "[DONE]" and "".join(c["choices"][0]["text"] for c in chunks[:-1]) == expected.text


def test_n_samples_are_seeded_sequential_generations(client: TestClient, gen: Any) -> None:
    request = {"messages": ASK, "max_tokens": 12, "temperature": 0.9, "top_k": 40, "seed": 5, "n": 2}
    body = client.post("/v1/chat/completions", json=request).json()
    texts = [c["message"]["content"] for c in body["choices"]]
    expected = [gen.generate(ASK, max_new_tokens=12, temperature=0.9, top_k=40, seed=5 + i).text for i in range(2)]
    assert [c["index"] for c in body["choices"]] == [0, 1] and texts == expected
    assert client.post("/v1/chat/completions", json=request).json()["choices"][1]["message"]["content"] == texts[1]


def test_bad_requests_are_openai_errors(client: TestClient, gen: Any) -> None:
    chat = "/v1/chat/completions"
    _error(client.post(chat, json={"messages": ASK, "temperature": 5}), 400, "temperature")
    _error(client.post(chat, json={"messages": ASK, "max_tokens": "ten"}), 400, "max_tokens")
    _error(client.post(chat, json={"messages": ASK, "n": 0}), 400, "n")
    _error(client.post(chat, json={"messages": []}), 400, "messages")
    _error(client.post(chat, json={"messages": [{"role": "wizard", "content": "hi"}]}), 400, "messages[0]")
    _error(client.post(chat, json={"messages": ASK, "logprobs": True}), 400, "logprobs")
    _error(client.post(chat, json={"messages": ASK, "response_format": {"type": "xml"}}), 400, "response_format")
    _error(client.post(chat, json={"messages": ASK, "tool_choice": "required"}), 400, "tool_choice")
    _error(client.post(chat, json={"messages": ASK, "strategy": "warp"}), 400)
    _error(client.post(chat, content=b"{not json", headers={"content-type": "application/json"}), 400)
    _error(client.post("/v1/completions", json={"prompt": ["a", "b"]}), 400, "prompt")
    assert _error(client.post(chat, json={"model": "gpt-9", "messages": ASK}), 404, "model")["code"] == \
        "model_not_found"
    _error(client.get("/v1/nothing"), 404)
    _error(client.post(chat, content=b" " * (MAX_BODY + 1), headers={"content-type": "application/json"}), 413)
    too_long = [{"role": "user", "content": "word " * CONTEXT}]
    assert _error(client.post(chat, json={"messages": too_long, "max_tokens": 4}), 400)["code"] == \
        "context_length_exceeded"
    fits = gen.tokenizer.encode_prompt(ASK, chat=True)
    error = _error(client.post(chat, json={"messages": ASK, "max_tokens": CONTEXT - len(fits) + 1}), 400)
    assert error["code"] == "context_length_exceeded"
    assert client.get("/health").json()["running"] is False  # nothing of that reached the model


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_follow_the_tool_schema(client: TestClient, stream: bool) -> None:
    for choice, name in (("required", None), ({"type": "function", "function": {"name": "get_time"}}, "get_time")):
        response = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "What is the weather like in Paris?"}], "max_tokens": 80,
            "temperature": 0, "tools": [WEATHER, TIME], "tool_choice": choice, "stream": stream})
        if stream:
            chunks = _events(response.text)[:-1]
            calls = _streamed_calls(chunks)
            finish = chunks[-1]["choices"][0]["finish_reason"]
            assert all(chunk["choices"][0]["delta"].get("content") in (None, "") for chunk in chunks)
        else:
            message = response.json()["choices"][0]["message"]
            calls, finish = message["tool_calls"], response.json()["choices"][0]["finish_reason"]
            assert message["content"] is None
        (call,) = calls
        assert finish == "tool_calls" and call["type"] == "function" and call["id"].startswith("call_")
        tool = {"get_weather": WEATHER, "get_time": TIME}[call["function"]["name"]]
        assert name is None or call["function"]["name"] == name
        jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])


def test_auto_tool_choice_answers_text_or_a_valid_call(client: TestClient) -> None:
    for question in ("What is the weather like in Paris?", "Say hello."):
        message = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": question}], "max_tokens": 60, "temperature": 0,
            "tools": [WEATHER]}).json()["choices"][0]["message"]
        if message.get("tool_calls"):
            jsonschema.validate(json.loads(message["tool_calls"][0]["function"]["arguments"]),
                                WEATHER["function"]["parameters"])
        else:
            assert message["content"] and not message["content"].startswith("<")


def test_tool_results_go_back_into_the_conversation(client: TestClient) -> None:
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                    "name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "-3 degrees, snow"}]
    body = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 16, "temperature": 0,
                                                     "tools": [WEATHER], "tool_choice": "none"}).json()
    assert body["choices"][0]["message"]["content"] and "tool_calls" not in body["choices"][0]["message"]


def test_only_the_latest_conversation_keeps_its_prefix(client: TestClient, gen: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the prompt cache (tests/test_prompt_cache.py has it), one Generator, one cache: a conversation's
    next turn forwards only what follows the prefix the cache still holds; after another conversation ran, it
    forwards all but the prefix they share."""
    import os

    monkeypatch.setattr(gen, "prompt_cache", None)
    rows: list[int] = []
    forward = gen.session.forward

    def counted(ids: Any, *args: Any, **options: Any) -> Any:
        rows.append(len(ids))
        return forward(ids, *args, **options)

    monkeypatch.setattr(gen.session, "forward", counted)

    def turn(messages: list[dict[str, Any]]) -> tuple[str, int, int]:
        rows.clear()
        body = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6, "temperature": 0,
                                                         "strategy": "ar"}).json()
        return body["choices"][0]["message"]["content"], body["usage"]["prompt_tokens"], rows[0]

    answer, prompt, _ = turn(ASK)
    second = [*ASK, {"role": "assistant", "content": answer}, {"role": "user", "content": "And three lakes?"}]
    _, prompt2, prefilled = turn(second)
    assert prefilled <= prompt2 - prompt  # the first turn's prompt was not forwarded again
    other = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Bonjour"}]
    turn(other)
    shared = len(os.path.commonprefix([gen.tokenizer.encode_prompt(m, chat=True) for m in (other, second)]))
    assert turn(second)[2] == prompt2 - shared


# -- a real server -----------------------------------------------------------------------------------
def test_openai_client_chat_completions_models(server: str, gen: Any) -> None:
    api = openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=120)
    assert [m.id for m in api.models.list()] == [gen.manifest.name]
    reply = api.chat.completions.create(model=gen.manifest.name, messages=ASK, max_tokens=16, temperature=0)
    assert reply.choices[0].message.content == gen.generate(ASK, max_new_tokens=16).text
    stream = api.chat.completions.create(model=gen.manifest.name, messages=ASK, max_tokens=16, temperature=0,
                                         stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    text = api.completions.create(model=gen.manifest.name, prompt="The capital of France is", max_tokens=8,
                                  temperature=0)
    assert text.choices[0].text == gen.generate("The capital of France is", max_new_tokens=8, chat=False).text
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="nope", messages=ASK, max_tokens=4)
    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model=gen.manifest.name, messages=ASK, max_tokens=4, top_p=3)
    assert bad.value.body["param"] == "top_p"


def test_openai_client_json_schema_answers_validate(server: str, gen: Any) -> None:
    api = openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=120)
    prompts = ["Invent a person and describe them as JSON.", "Give me a JSON record of a famous scientist.",
               "My friend Ana is 31 and lives in Lisbon. Answer in JSON."]
    for i, prompt in enumerate(prompts):
        reply = api.chat.completions.create(
            model=gen.manifest.name, messages=[{"role": "user", "content": prompt}], max_tokens=80,
            temperature=0.7 if i else 0, seed=i,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), PERSON)
    anything = api.chat.completions.create(model=gen.manifest.name, messages=ASK, max_tokens=80, temperature=0,
                                           response_format={"type": "json_object"})
    assert isinstance(json.loads(anything.choices[0].message.content), dict)
    call = api.chat.completions.create(model=gen.manifest.name, max_tokens=60,
                                       messages=[{"role": "user", "content": "Time in Tokyo?"}], temperature=0,
                                       tools=[WEATHER, TIME], tool_choice="required")
    (tool_call,) = call.choices[0].message.tool_calls
    assert tool_call.function.name in ("get_weather", "get_time") and json.loads(tool_call.function.arguments)


def test_openai_client_tool_call_through_the_model_template(gen: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 model under a template that renders tools (Qwen2.5's; ChatML like SmolLM2's own): the tools
    go through the template, the call comes back in tool_calls (streamed and not), and the call and its
    result go back through the template in the next turn."""
    from dataclasses import replace

    from edgegen.tokenizer import TextTokenizer

    template = str(TEMPLATES / "qwen2.5.jinja")  # an absolute path: the folder's own template is left alone
    monkeypatch.setattr(gen, "tokenizer", TextTokenizer(gen.folder, replace(gen.manifest, chat_template=template)))
    app = create_app(gen)
    assert (app.state.tools.format.name, app.state.tools.template_renders) == ("hermes", True)
    messages = [{"role": "user", "content": "What is the weather like in Paris?"}]
    ask = {"model": gen.manifest.name, "messages": messages, "tools": [WEATHER, TIME], "tool_choice": "required",
           "max_tokens": 80, "temperature": 0}
    with running(app) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        reply = api.chat.completions.create(**ask)
        deltas = [d for c in api.chat.completions.create(**ask, stream=True) if c.choices
                  for d in c.choices[0].delta.tool_calls or []]
        (call,) = reply.choices[0].message.tool_calls
        result = [*messages, reply.choices[0].message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"}]
        answer = api.chat.completions.create(**{**ask, "messages": result, "tool_choice": "none", "max_tokens": 12})
    assert reply.usage.prompt_tokens == len(gen.tokenizer.encode_prompt(messages, chat=True,
                                                                        tools=[WEATHER, TIME]))
    tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
    assert reply.choices[0].finish_reason == "tool_calls" and reply.choices[0].message.content is None
    assert [d.index for d in deltas] == [0, 0] and deltas[0].function.name == call.function.name
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    called = f'<tool_call>\n{{"name": "{call.function.name}", "arguments": {call.function.arguments}}}\n</tool_call>'
    function = {"name": call.function.name, "arguments": json.loads(call.function.arguments)}
    tokens = gen.tokenizer.encode_prompt([*messages, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": function}]}, {"role": "tool", "content": "18 degrees, sunny"}], chat=True)
    assert called in gen.tokenizer.decode(tokens) and answer.usage.prompt_tokens == len(tokens)


def _health(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=10).json()


def _wait(url: str, ready: Any) -> dict[str, Any]:
    """Poll /health until ``ready(state)`` (bounded: fails after 60 s)."""
    deadline = time.monotonic() + 60
    while not ready(state := _health(url)):
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    return state


def _long(stream: bool) -> dict[str, Any]:
    """A request that would run to the end of the context unless stopped."""
    return {"messages": ASK, "max_tokens": CONTEXT - 64, "temperature": 0, "ignore_eos": True, "stream": stream}


def test_disconnect_cancels_the_generation_and_frees_the_server(server: str, gen: Any) -> None:
    before = _health(server)
    with httpx.Client(base_url=server, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=_long(True)) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # generating now
        # the connection is closed here, ~1 of 960 tokens in
    state = _wait(server, lambda s: not s["running"] and s["cancelled"] > before["cancelled"])
    assert state["completed"] == before["completed"]  # stopped, not finished
    reply = httpx.post(f"{server}/v1/chat/completions", json={"messages": ASK, "max_tokens": 8, "temperature": 0},
                       timeout=60).json()
    assert reply["choices"][0]["message"]["content"] == gen.generate(ASK, max_new_tokens=8).text


def test_full_queue_answers_503_with_retry_after(gen: Any) -> None:
    with running(create_app(gen, max_queue=1)) as url, httpx.Client(base_url=url, timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json=_long(True)) as first:
            lines = first.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # running
            waiting: dict[str, Any] = {}
            queued = threading.Thread(target=lambda: waiting.update(r=httpx.post(
                f"{url}/v1/chat/completions", json={"messages": ASK, "max_tokens": 8, "temperature": 0},
                timeout=120)))
            queued.start()
            _wait(url, lambda s: s["queued"] == 1)
            refused = http.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 8})
            assert _error(refused, 503)["code"] == "server_busy"
            assert int(refused.headers["Retry-After"]) >= 1
        queued.join(timeout=120)  # the first one's client left: the waiting one runs
        assert waiting["r"].status_code == 200
        assert waiting["r"].json()["choices"][0]["message"]["content"] == gen.generate(ASK, max_new_tokens=8).text


def test_concurrent_clients_each_get_their_own_answer(gen: Any) -> None:
    """6 clients x 3 requests at once (queue bound 8: none refused); each answer is its request's answer alone."""
    prompts = [f"Write one short sentence about the number {i}." for i in range(6)]
    alone = {p: gen.generate([{"role": "user", "content": p}], max_new_tokens=10).text for p in prompts}
    answers: list[tuple[str, httpx.Response]] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            for j in range(3):
                prompt = prompts[(i + j) % len(prompts)]
                answers.append((prompt, http.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": prompt}], "max_tokens": 10, "temperature": 0})))

    with running(create_app(gen, max_queue=8)) as url:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert _health(url)["completed"] == 18
    assert len(answers) == 18
    for prompt, response in answers:
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == alone[prompt]


def test_greedy_n_is_one_superposed_pass(fp32_model: Path) -> None:
    import edgegen

    gen = edgegen.load(fp32_model, backend="onnxruntime", embeddings=True, max_length=CONTEXT)
    with TestClient(create_app(gen)) as client:
        body = client.post("/v1/chat/completions", json={"messages": ASK, "n": 3, "max_tokens": 12,
                                                         "temperature": 0}).json()
    drafts = gen.generate(ASK, max_new_tokens=12, strategy="superposed", num_drafts=3).drafts
    assert [c["message"]["content"] for c in body["choices"]] == [d.text for d in drafts]
    assert body["usage"]["completion_tokens"] == sum(len(d.token_ids) for d in drafts)


# -- tool-call formats (no model) --------------------------------------------------------------------
TEMPLATES = Path(__file__).parent / "data" / "templates"
# format, realistic model text, the content around the calls, the calls (name, arguments)
READS = [
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
     None, [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    ("hermes", 'I will look that up.\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>',
     "I will look that up.\n", [("get_time", {"zone": "CET"})]),
    ("hermes", '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>\n<tool_call>\n'
               '{"name": "get_time", "arguments": "{\\"zone\\": \\"CET\\"}"}\n</tool_call>',
     None, [("get_time", {"zone": "UTC"}), ("get_time", {"zone": "CET"})]),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>',
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>', []),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
     None, [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    ("llama3_json", '<|python_tag|>{"name": "get_time", "parameters": {"zone": "UTC"}}; '
                    '{"name": "get_time", "parameters": {"zone": "CET"}}',
     None, [("get_time", {"zone": "UTC"}), ("get_time", {"zone": "CET"})]),
    ("llama3_json", 'Calling it: {"name": "get_time", "parameters": {"zone": "UTC"}}',
     "Calling it: ", [("get_time", {"zone": "UTC"})]),
    ("llama3_json", '{"name": "get_time", "parameters": {"zone": "UTC"}',
     '{"name": "get_time", "parameters": {"zone": "UTC"}', []),
    ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]',
     None, [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    ("mistral", '[{"name": "get_time", "arguments": {"zone": "UTC"}}, {"name": "get_time", "arguments": '
                '{"zone": "CET"}}]',  # [TOOL_CALLS] is a special token: decoding drops it
     None, [("get_time", {"zone": "UTC"}), ("get_time", {"zone": "CET"})]),
    ("mistral", '[TOOL_CALLS] [{"name": "get_time", "arguments": {"zone": "UTC"}',
     '[TOOL_CALLS] [{"name": "get_time", "arguments": {"zone": "UTC"}', []),
    ("mistral", "It is sunny in Paris.", "It is sunny in Paris.", []),
    ("phi4_mini", '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]'
                  '<|/tool_call|>', None, [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    ("phi4_mini", 'Let me check. [{"name": "get_time", "arguments": {"zone": "UTC"}}]',
     "Let me check. ", [("get_time", {"zone": "UTC"})]),
    ("phi4_mini", '<|tool_call|>[{"name": 3}]<|/tool_call|>', '<|tool_call|>[{"name": 3}]<|/tool_call|>', []),
    ("gemma", '```tool_code\nget_weather(city="Paris", unit="celsius")\n```',
     None, [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    ("gemma", '```tool_code\n[get_time(zone="UTC"), print(get_time(zone="CET"))]\n```',
     None, [("get_time", {"zone": "UTC"}), ("get_time", {"zone": "CET"})]),
    ("gemma", 'Sure!\n```json\n{"name": "get_time", "parameters": {"zone": "UTC"}}\n```',
     "Sure!\n", [("get_time", {"zone": "UTC"})]),
    ("gemma", '{"name": "get_time", "parameters": {"zone": "UTC"}}', None, [("get_time", {"zone": "UTC"})]),
    ("gemma", '```tool_code\nimport os; os.remove("x")\n```', '```tool_code\nimport os; os.remove("x")\n```', []),
]


@pytest.mark.parametrize("name,text,content,calls", READS, ids=[f"{r[0]}-{i}" for i, r in enumerate(READS)])
def test_each_format_reads_realistic_model_text(name: str, text: str, content: str | None, calls: list[Any]) -> None:
    from edgegen.serve.tool_formats import BY_NAME, Call
    from edgegen.serve.tools import CallReader

    fmt = BY_NAME[name]
    assert fmt.parse(text) == (content, [Call(n, a) for n, a in calls])
    reader, streamed, sent = CallReader(fmt), [], []
    for i in range(0, len(text), 3):  # streamed in 3-character pieces: the same content and calls
        piece, new = reader.push(text[i : i + 3])
        streamed.append(piece)
        sent += new
    rest, new = reader.end()
    assert "".join(streamed) + rest == (content or "") and reader.content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in sent + new] == calls
    if calls:  # no opener ever went out as content
        assert content is None or "".join(streamed) == content[: len("".join(streamed))]
        assert not any(s.literal[:2] in "".join(streamed) for s in fmt.syntaxes)


WEATHER_PARAMS = WEATHER["function"]["parameters"]
OSLO = {"city": "Oslo", "unit": "celsius"}
CONVERSATION = [
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(OSLO)}}]},
    {"role": "tool", "tool_call_id": "abcDEF123", "name": "get_weather", "content": "-3 degrees"},
    {"role": "assistant", "content": "It is -3 degrees."}, {"role": "user", "content": "And in Rome?"}]
# template, the special tokens of the family's vocabulary, its format, whether the template renders tools,
# what the prompt must hold: the tool list, the earlier call and its result, each in the family's form
FAMILIES = {
    "qwen2.5": ((), "hermes", True, [
        '<tools>\n{"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city", '
        f'"parameters": {json.dumps(WEATHER_PARAMS)}}}}}\n</tools>',
        f'<tool_call>\n{{"name": "get_weather", "arguments": {json.dumps(OSLO)}}}\n</tool_call>',
        "<|im_start|>user\n<tool_response>\n-3 degrees\n</tool_response><|im_end|>"]),
    "llama3.1": (("<|python_tag|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "llama3_json", True, [
        f"value}}.Do not use variables.\n\n{json.dumps(WEATHER, indent=4)}\n\nWeather in Oslo?",
        f'{{"name": "get_weather", "parameters": {json.dumps(OSLO)}}}<|eot_id|>',
        '<|start_header_id|>ipython<|end_header_id|>\n\n"-3 degrees"<|eot_id|>']),
    "mistral-v3": (("[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
                    "[/TOOL_RESULTS]"), "mistral", True, [
        '[AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "get_weather", "description": "Current weather '
        f'of a city", "parameters": {json.dumps(WEATHER_PARAMS)}}}}}][/AVAILABLE_TOOLS][INST] Be brief.',
        f'[TOOL_CALLS] [{{"name": "get_weather", "arguments": {json.dumps(OSLO)}, "id": "abcDEF123"}}]',
        '[TOOL_RESULTS] {"content": -3 degrees, "call_id": "abcDEF123"}[/TOOL_RESULTS]']),
    "phi-4-mini": (("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool|>", "<|/tool|>", "<|tool_call|>",
                    "<|/tool_call|>"), "phi4_mini", True, [
        f"<|system|>Be brief.<|tool|>{json.dumps([WEATHER['function']])}<|/tool|><|end|>",
        f'<|assistant|><|tool_call|>[{{"name": "get_weather", "arguments": {json.dumps(OSLO)}}}]<|/tool_call|><|end|>',
        "<|tool|>-3 degrees<|end|>"]),
    "gemma-3": (("<start_of_turn>", "<end_of_turn>"), "gemma", False, [
        "<start_of_turn>user\nBe brief.\n\nYou have access to functions. If you decide to invoke any of the "
        f"function(s), you MUST put it in the format of\n{{\"name\": function name, \"parameters\": dictionary of "
        f"argument name and its value}}\n\nYou SHOULD NOT include any other text in the response if you call a "
        f"function\n{json.dumps([WEATHER])}\n\nWeather in Oslo?<end_of_turn>",
        f'<start_of_turn>model\n{{"name": "get_weather", "parameters": {json.dumps(OSLO)}}}<end_of_turn>',
        "<start_of_turn>user\n```tool_output\n-3 degrees\n```<end_of_turn>"]),
    "chatml": ((), "hermes", False, [  # SmolLM2's kind of template: no tools in it
        "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist with the user query."
        "\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f"{json.dumps(WEATHER)}\n</tools>",
        f'<|im_start|>assistant\n<tool_call>\n{{"name": "get_weather", "arguments": {json.dumps(OSLO)}}}\n</tool_call>',
        "<|im_start|>user\n<tool_response>\n-3 degrees\n</tool_response><|im_end|>"]),
}


def _family_generator(folder: Path, family: str) -> Any:
    from fake_generator import CHATML, fake_generator

    specials = FAMILIES[family][0]
    template = CHATML if family == "chatml" else (TEMPLATES / f"{family}.jinja").read_text()
    return fake_generator(folder, delay_s=0.0, extra_specials=specials, template=template, max_length=2048)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tools_render_through_the_family_template(family: str, tmp_path: Path) -> None:
    """Detection from template and vocabulary; the prompt holds the tools, an earlier call and its result in
    the family's own form, and equals transformers' rendering of the same messages."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from edgegen.serve.protocol import parse_chat
    from edgegen.serve.tools import chat_inputs, model_tools

    _, name, renders, expected = FAMILIES[family]
    tok = _family_generator(tmp_path, family).tokenizer
    model = model_tools(tok)
    assert (model.format.name, model.template_renders) == (name, renders)
    request = parse_chat({"messages": CONVERSATION, "tools": [WEATHER]})
    messages, specs = chat_inputs(request.messages, request.tools, model)
    prompt = tok.render_chat(messages, specs)
    for part in expected:
        assert part in prompt
    assert prompt == render_jinja_template([messages], tools=specs, chat_template=tok.chat_template,
                                           add_generation_prompt=True, bos_token=tok.bos_token,
                                           eos_token=tok.eos_token)[0][0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_format_grammar_admits_its_calls_only(family: str, tmp_path: Path) -> None:
    """The grammar of the family's call format (special-token markers forced as those tokens) accepts the
    call the format writes with arguments on the schema, refuses them off the schema, and under tool_choice
    auto accepts plain text but no call hidden in it."""
    import llguidance

    from edgegen.grammar import grammars_for
    from edgegen.serve.tool_formats import Call
    from edgegen.serve.tools import ToolPlan, grammar, model_tools, parse_tools

    gen = _family_generator(tmp_path, family)
    model = model_tools(gen.tokenizer)
    tokenizer = grammars_for(gen.folder, gen.manifest)._tokenizer
    plan = parse_tools({"tools": [WEATHER, TIME], "tool_choice": "required"})

    def accepts(plan: ToolPlan, text: str) -> bool:
        matcher = llguidance.LLMatcher(tokenizer, grammar(plan, model), log_level=0)
        ids = gen.tokenizer.encode(text)
        return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()

    good = model.format.write([Call("get_weather", OSLO)])
    assert all(gen.tokenizer.backend.token_to_id(m) in gen.tokenizer.encode(good) for m in model.special)
    assert accepts(plan, good) and accepts(ToolPlan(plan.tools, "auto"), good)
    assert not accepts(plan, model.format.write([Call("get_weather", {"city": "Oslo", "unit": "kelvin"})]))
    assert not accepts(plan, model.format.write([Call("get_weather", {"city": "Oslo"})]))
    assert not accepts(plan, "It is cold.") and accepts(ToolPlan(plan.tools, "auto"), "It is cold.")
    assert accepts(ToolPlan(plan.tools, "auto"), "```python\nprint('cold')\n```")
    auto = ToolPlan(plan.tools, "auto")
    assert accepts(auto, f"Sure. {good}") == bool(model.format.call_open)  # text may lead into a marked call
    assert not accepts(auto, f"Sure. {good} Done.") and not accepts(auto, f"Sure. {good.replace('celsius', 'kelvin')}")
    assert not accepts(ToolPlan(plan.tools, "get_time"), good)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_call_comes_back_in_tool_calls(family: str, tmp_path: Path) -> None:
    """A fake model (no export) behind the server, through each family's template and format: the forced
    call comes back parsed, its arguments on the schema, the same streamed and not."""
    gen = _family_generator(tmp_path, family)
    request = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": [WEATHER, TIME],
               "tool_choice": "required", "max_tokens": 300, "temperature": 0}
    with TestClient(create_app(gen)) as client:
        whole = client.post("/v1/chat/completions", json=request).json()["choices"][0]
        chunks = _events(client.post("/v1/chat/completions", json={**request, "stream": True}).text)[:-1]
    assert whole["finish_reason"] == "tool_calls" and whole["message"]["content"] is None
    (call,) = whole["message"]["tool_calls"]
    tool = {"get_weather": WEATHER, "get_time": TIME}[call["function"]["name"]]
    jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])
    assert (len(call["id"]), call["id"].isalnum()) == (9, True) if family == "mistral-v3" else \
        call["id"].startswith("call_")
    (streamed,) = _streamed_calls(chunks)
    assert streamed["function"] == call["function"] and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["choices"][0]["delta"].get("content") in (None, "") for c in chunks)
