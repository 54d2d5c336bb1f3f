"""The FastAPI app: OpenAI-shaped routes over one :class:`~experiments.serving.engine.Engine`.

    POST /v1/completions, /v1/chat/completions   (stream=true: server-sent events, token by token)
    GET  /v1/models, /health, /metrics (Prometheus text), /  (the chat page)

Every refusal is ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status, the
field named in ``param`` and at the start of ``message``; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from experiments.serving.engine import Engine, Job, Params, QueueFull, RequestError
from experiments.serving.schemas import (
    CHAT_TURN,
    ChatRequest,
    CompletionRequest,
    Sampling,
    render_chat,
)

CHAT_PAGE = Path(__file__).parent / "static" / "chat.html"
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})
ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error",
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _field(loc: tuple) -> str:
    """``("body", "messages", 0, "role")`` -> ``messages[0].role`` (union branch tags dropped)."""
    out = ""
    for part in loc[1:]:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
        else:
            break
    return out or "body"


def _validation_message(err: dict[str, Any]) -> tuple[str, str]:
    if err["type"] == "json_invalid":
        return "body", f"body: malformed JSON ({err.get('ctx', {}).get('error', 'cannot parse')})"
    field = _field(tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        return field, f"{field}: unknown field"
    if err["type"] == "missing":
        return field, f"{field}: required field missing"
    return field, f"{field}: {err['msg']}"


def create_app(engine: Engine, max_body_bytes: int = 2 << 20) -> FastAPI:
    """The app serving ``engine``'s model; the engine's worker runs while the app does."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title=f"lhp serve: {engine.model.name}", lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    metrics, name = engine.metrics, engine.model.name

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_body_bytes:
            response: Response = JSONResponse(error_body(
                f"body: {int(size):,} bytes, more than this server's limit of {max_body_bytes:,}",
                "body"), status_code=413)
        else:
            response = await call_next(request)
        route = request.url.path if request.url.path in ROUTES else "other"
        metrics.requests.labels(route, str(response.status_code)).inc()
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        param, message = _validation_message(exc.errors()[0])
        return JSONResponse(error_body(message, param), status_code=400)

    @app.exception_handler(RequestError)
    async def refused(_: Request, exc: RequestError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else None
        code = "model_not_found" if exc.status == 404 else None
        return JSONResponse(error_body(exc.message, exc.param, exc.kind, code),
                            status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), None), status_code=exc.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(CHAT_PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "queue_depth": engine.depth}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                             "owned_by": "lhp", "context_length": engine.model.block_size}]}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def start(req: Sampling, prompt: str, field: str, chat: bool) -> Job:
        if req.model is not None and req.model != name:
            raise RequestError("model", f"model: {req.model!r} is not served here; this server "
                               f"serves {name!r} (GET /v1/models)", 404, "invalid_request_error")
        ids = engine.prepare(prompt, field, max_tokens=req.max_tokens, n=req.n, truncate=req.truncate)
        stops = tuple(req.stop_list()) + ((CHAT_TURN,) if chat else ())
        params = Params(req.max_tokens or engine.default_max_tokens, req.temperature, req.top_k,
                        req.top_p, stops, req.seed, req.n, req.ignore_eos)
        job = Job(ids, params, asyncio.get_running_loop(), stream=req.stream)
        engine.submit(job)
        return job

    async def answer(req: Sampling, job: Job, chat: bool) -> Response:
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        head = {"id": rid, "created": int(time.time()), "model": name}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_events(job, head, chat, req.n, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts, reasons = [""] * req.n, ["length"] * req.n
        try:
            while True:
                event = await job.events.get()
                if event[0] == "delta":
                    texts[event[1]] += event[2]
                elif event[0] == "finish":
                    reasons[event[1]] = event[2]
                elif event[0] == "error":
                    return JSONResponse(error_body(event[1], None, "server_error"), status_code=500)
                else:
                    usage = event[1]
                    break
        finally:
            job.cancelled.set()  # a client gone mid-wait frees the model at the next token
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t},
                        "logprobs": None, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(texts, reasons, strict=True))]
        else:
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(texts, reasons, strict=True))]
        obj = "chat.completion" if chat else "text_completion"
        return JSONResponse({**head, "object": obj, "choices": choices, "usage": usage})

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Response:
        return await answer(req, start(req, req.prompt, "prompt", False), False)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest) -> Response:
        return await answer(req, start(req, render_chat(req.messages), "messages", True), True)

    return app


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _events(job: Job, head: dict[str, Any], chat: bool, n: int,
                  include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events of one streamed request; a client that leaves cancels its job."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(row: int, text: str | None, reason: str | None) -> dict[str, Any]:
        if chat:
            delta = {} if text is None else {"content": text}
            if text == "" and reason is None:
                delta = {"role": "assistant", "content": ""}
            choice = {"index": row, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": row, "text": text or "", "logprobs": None, "finish_reason": reason}
        return {**head, "object": obj, "choices": [choice]}

    try:
        if chat:
            for row in range(n):
                yield _sse(chunk(row, "", None))
        while True:
            event = await job.events.get()
            if event[0] == "delta":
                yield _sse(chunk(event[1], event[2], None))
            elif event[0] == "finish":
                yield _sse(chunk(event[1], None, event[2]))
            elif event[0] == "error":
                yield _sse(error_body(event[1], None, "server_error"))
                break
            else:
                if include_usage:
                    yield _sse({**head, "object": obj, "choices": [], "usage": event[1]})
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()
