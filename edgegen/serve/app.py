"""The Starlette app: OpenAI-compatible routes over one loaded Generator.

POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /v1/models/{id}, GET /health.
Every error is OpenAI's error JSON with its status; nothing else (no traceback) reaches a client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgegen.errors import EdgegenError
from edgegen.serve import generation, tools
from edgegen.serve.engine import END, Engine, Failed, Job
from edgegen.serve.errors import ApiError
from edgegen.serve.generation import Finished, Piece, Started
from edgegen.serve.protocol import GenerationRequest, parse_chat, parse_completion
from edgegen.serve.responses import Shaper

log = logging.getLogger("edgegen.serve")
MAX_BODY = 8 << 20  # bytes


def create_app(generator: Any, max_queue: int = 8, model_id: str | None = None) -> Starlette:
    """An ASGI app serving ``generator`` (an ``edgegen.load`` Generator) under ``model_id``
    (default: the model's name); at most ``max_queue`` requests wait behind the running one."""
    engine = Engine(max_queue)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(engine.close)

    app = Starlette(routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ], exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan)
    app.state.generator = generator
    app.state.tools = tools.model_tools(generator.tokenizer)
    app.state.engine = engine
    app.state.model_id = model_id or generator.manifest.name
    app.state.created = int(time.time())
    return app


# -- routes ------------------------------------------------------------------------------------------
async def chat_completions(request: Request) -> Response:
    return await _generate(request, parse_chat(await _body(request)))


async def completions(request: Request) -> Response:
    return await _generate(request, parse_completion(await _body(request)))


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [_model_card(request)]})


async def model(request: Request) -> Response:
    _check_model(request, request.path_params["model_id"])
    return JSONResponse(_model_card(request))


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "model": request.app.state.model_id, **request.app.state.engine.state()})


def _model_card(request: Request) -> dict[str, Any]:
    state = request.app.state
    return {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "edgegen"}


def _check_model(request: Request, name: str | None) -> None:
    if name is not None and name != request.app.state.model_id:
        raise ApiError(404, f"the model '{name}' does not exist; this server serves '{request.app.state.model_id}'",
                       param="model", code="model_not_found")


async def _body(request: Request) -> dict[str, Any]:
    chunks, size = [], 0
    async for chunk in request.stream():  # read up to the limit, not whatever a client sends
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, f"the request body is over {MAX_BODY >> 20} MiB", code="request_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


# -- generation --------------------------------------------------------------------------------------
async def _generate(request: Request, parsed: GenerationRequest) -> Response:
    _check_model(request, parsed.model)
    state = request.app.state
    gen = state.generator
    grammar = tools.grammar(parsed.tools, state.tools) if parsed.tools is not None else parsed.grammar
    plan = generation.make_plan(gen, parsed, grammar, state.tools)
    job = state.engine.submit(lambda job: generation.run(gen, plan, job))
    watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
    calls = state.tools.format if parsed.tools is not None else None
    shaper = Shaper(parsed.messages is not None, state.model_id, parsed.sampling.n, calls, parsed.include_usage)
    try:
        first = await job.next()  # waits in the queue; a request that fails its checks ends here
        if first is END:
            raise ApiError(499, "the client closed the request", code="client_closed")
        if isinstance(first, Failed):
            raise _as_api_error(first.error)
        assert isinstance(first, Started)
        shaper.prompt_tokens = first.prompt_tokens
        if parsed.stream:
            stream, watcher = _events(job, shaper, watcher), None
            return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        while (event := await job.next()) is not END:
            if isinstance(event, Failed):
                raise _as_api_error(event.error)
            shaper.add(event)
        return JSONResponse(shaper.response())
    finally:
        if watcher is not None:
            job.cancel()  # no-op once the job ended
            watcher.cancel()


async def _events(job: Job, shaper: Shaper, watcher: asyncio.Task[None]) -> AsyncIterator[str]:
    """The server-sent events of a streamed response, ending with ``data: [DONE]``."""
    try:
        while (event := await job.next()) is not END:
            if isinstance(event, Failed):  # after the first piece: the error can only arrive in the stream
                yield _sse(_as_api_error(event.error).body())
                continue
            if isinstance(event, Piece | Finished):
                for chunk in shaper.chunks(event):
                    yield _sse(chunk)
        if shaper.include_usage:
            yield _sse(shaper.usage_chunk())
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # the client went away mid-stream: stop generating (a no-op once the job ended)
        watcher.cancel()


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    """Cancel the job when the client disconnects (the body has been read: only http.disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()


# -- errors ------------------------------------------------------------------------------------------
def _as_api_error(error: BaseException) -> ApiError:
    if isinstance(error, ApiError):
        return error
    if isinstance(error, EdgegenError):
        return ApiError(400, str(error))
    log.error("generation failed", exc_info=error)
    return ApiError(500, "internal error while generating (see the server log)", kind="server_error")


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
    return JSONResponse(ApiError(error.status_code, str(error.detail), code=code).body(),
                        status_code=error.status_code, headers=error.headers)


async def _internal_error(request: Request, error: Exception) -> Response:
    if isinstance(error, EdgegenError):
        return await _api_error(request, ApiError(400, str(error)))
    log.error("request failed", exc_info=error)
    return JSONResponse(ApiError(500, "internal server error (see the server log)", kind="server_error").body(),
                        status_code=500)
