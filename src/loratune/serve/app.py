"""The HTTP server: an OpenAI-compatible API over one base model and its LoRA adapters.

Routes: POST /v1/chat/completions, POST /v1/completions (both stream as server-sent events in
OpenAI's chunk format), GET /v1/models, POST /v1/adapters and DELETE /v1/adapters/{name}
(load/unload at run time), GET /health, and the web chat page at `/`.

Requests never generate on the event loop: they become `Job`s in the `Batcher`'s bounded queue
(429 when full) and a worker thread generates them in batches, so /health and new requests are
answered while a long generation runs. Every bad request gets an OpenAI-style error body and a
4xx status, and the server carries on.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loratune.errors import AdapterExists, LoratuneError, QueueFull, RequestError, ServeError
from loratune.generate import clean_output
from loratune.serve import schemas
from loratune.serve.batching import Batcher
from loratune.serve.decode import DecodeBatch
from loratune.serve.jobs import Job, JobEvent, Sampling
from loratune.serve.prompts import PromptProfile, build_chat_prompt, build_completion_prompt, check_length
from loratune.serve.registry import BASE_NAME, RESERVED_NAMES, ModelRegistry, open_registry
from loratune.serve.schemas import error_body, sse

PUBLIC_PATHS = {"/health", "/"}
"""Reachable without the API key: the health probe, and the chat page (static HTML with no
data in it; every API call the page makes carries the key)."""


@dataclass
class ServeSettings:
    """Server limits. Defaults suit one CPU or GPU box serving a few clients."""

    api_key: str | None = None
    cors: bool = False
    max_batch_size: int = 8
    queue_size: int = 64
    """Requests waiting for generation; one more is answered 429."""
    batch_wait_s: float = 0.01
    """How long the first request of a batch waits for others to join it."""
    default_max_tokens: int = 256
    max_tokens_limit: int = 4096
    """Largest `max_tokens` accepted."""
    max_context: int | None = None
    """Prompt + answer limit in tokens; None is the model's own context."""
    max_body_bytes: int = 1_000_000
    adapter_roots: tuple[Path, ...] = ()
    """Folders `POST /v1/adapters` may load from (`--adapter-root`); empty: loading over HTTP is off."""


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the server's limit of {limit} bytes")


class _Guard:
    """ASGI middleware: the API key on every route but PUBLIC_PATHS, and the body size limit.

    Plain ASGI rather than a decorator middleware, so streamed responses pass through untouched.
    """

    def __init__(self, app: Any, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        key = self.settings.api_key
        if key and scope["path"] not in PUBLIC_PATHS and scope["method"] != "OPTIONS":
            given = headers.get("authorization", "")
            token = given[7:].strip() if given.lower().startswith("bearer ") else headers.get("x-api-key", "")
            if not hmac.compare_digest(token.encode(), key.encode()):
                message = "missing API key" if not token else "incorrect API key"
                await _send_json(scope, send, 401, error_body(
                    401, f"{message}; send it as 'Authorization: Bearer KEY'", code="invalid_api_key"))
                return
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _send_json(scope, send, 413, error_body(413, _BodyTooLarge(limit).detail, code="request_too_large"))
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)  # FastAPI re-raises HTTPExceptions from body reading
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(scope: dict, send: Any, status: int, body: dict) -> None:
    await JSONResponse(body, status_code=status)(scope, None, send)


def _error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param, code=code), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable sentence and the parameter name from pydantic's first error."""
    error = exc.errors()[0]
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    if error.get("type") == "json_invalid":
        detail = (error.get("ctx") or {}).get("error", "")
        return f"malformed JSON in the request body ({detail})".replace(" ()", ""), None
    if not loc or error.get("type") in ("model_attributes_type", "dict_type"):
        return "the request body must be a JSON object", None
    param = loc[0] if len(loc) == 1 or not loc[1].isdigit() else f"{loc[0]}[{loc[1]}]"
    if error.get("type") == "missing":
        return f"missing required parameter '{'.'.join(loc)}'", param
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"invalid value for '{'.'.join(loc)}': {message}", param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if "json" not in request.headers.get("content-type", "").lower():  # FastAPI then never parsed the body
            return _error_response(400, "send the request body as JSON, with 'Content-Type: application/json'")
        message, param = _validation_message(exc)
        return _error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error_response(404, f"no route {request.method} {request.url.path}", code="unknown_url")
        code = "request_too_large" if exc.status_code == 413 else None
        return _error_response(exc.status_code, str(exc.detail), code=code)

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error_response(exc.status, exc.message, param=exc.param, code=exc.code)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(500, f"internal error: {type(exc).__name__}: {exc}")


def create_app(registry: ModelRegistry, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app over `registry`; the batcher thread runs while the app is up."""
    settings = settings or ServeSettings()
    if settings.max_context:
        registry.context = min(registry.context, settings.max_context)
    batcher = Batcher(DecodeBatch(registry), max_batch_size=settings.max_batch_size, queue_size=settings.queue_size,
                      batch_wait_s=settings.batch_wait_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="loratune", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry = registry
    app.state.batcher = batcher
    _install_error_handlers(app)
    app.add_middleware(_Guard, settings=settings)
    if settings.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])

    def served_name(model: str) -> str:
        name = registry.resolve_name(model)
        if name is None:
            raise RequestError(404, f"the model {model!r} does not exist; served models: {', '.join(registry.names())}",
                               param="model", code="model_not_found")
        return name

    def served_profile(model: str) -> tuple[str, PromptProfile]:
        name = served_name(model)
        try:
            return name, registry.profile(name)
        except KeyError:  # unloaded between the two lookups
            raise RequestError(404, f"the model {model!r} was just unloaded", param="model",
                               code="model_not_found") from None

    def model_card(name: str) -> dict[str, Any]:
        profile = registry.profile(name)
        created = registry.created if name == BASE_NAME else registry.adapters[name].created
        return {
            "id": name, "object": "model", "created": created, "owned_by": "loratune",
            "base_model": registry.base_source, "task": profile.task.name if profile.task else None,
            "task_family": profile.task_family, "multi_turn": profile.multi_turn,
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("loratune.serve").joinpath("page.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "queued": batcher.queued, "running": batcher.running}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(name) for name in registry.names()]}

    @app.get("/v1/models/{model}")
    async def get_model(model: str) -> dict[str, Any]:
        return model_card(served_name(model))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: schemas.ChatCompletionRequest) -> Any:
        name, profile = served_profile(body.model)
        messages = [m.model_dump() for m in body.messages]
        built = build_chat_prompt(profile, registry.tokenizer, registry.model_type, messages)
        return await answer(body, name, built, chat=True)

    @app.post("/v1/completions")
    async def completions(body: schemas.CompletionRequest) -> Any:
        name = served_name(body.model)
        built = build_completion_prompt(registry.tokenizer, registry.model_type, body.prompt)
        return await answer(body, name, built, chat=False)

    async def answer(body: Any, name: str, built: Any, *, chat: bool) -> Any:
        requested = body.answer_tokens
        if requested is not None and requested > settings.max_tokens_limit:
            raise RequestError(400, f"max_tokens is {requested}, over this server's limit of "
                               f"{settings.max_tokens_limit}", param="max_tokens")
        budget = check_length(len(built.ids), requested, model_type=registry.model_type, limit=registry.context,
                              default_max_tokens=settings.default_max_tokens,
                              prompt_param="messages" if chat else "prompt")
        sampling = Sampling(temperature=1.0 if body.temperature is None else body.temperature,
                            top_p=1.0 if body.top_p is None else body.top_p)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[JobEvent] = asyncio.Queue()

        def sink(event: JobEvent) -> None:
            # Called on the generating thread. A non-streamed answer is read from the job at the
            # end, so only its final event needs to wake the event loop.
            if body.stream or event.type != "delta":
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(name, built.ids, max_tokens=budget, sampling=sampling, stop=body.stop, strip=chat, sink=sink)
        batcher.start()  # no-op once running (the lifespan starts it; bare ASGI test clients may not)
        try:
            batcher.submit(job)
        except QueueFull as exc:
            return _error_response(429, f"the server is busy ({exc}); retry shortly",
                                   code="rate_limit_exceeded", headers={"Retry-After": "1"})
        rid = schemas.new_id("chatcmpl" if chat else "cmpl")
        if body.stream:
            return StreamingResponse(stream(job, events, rid, name, built, chat, body.include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            event = await events.get()
        finally:
            job.cancel()  # no-op once finished; stops the job when the client went away
        if event.type == "error":
            return _error_response(event.status, event.text)
        text = job.text  # complete: the job finished before its final event was sent
        reason = schemas.finish_reason_for_client(job.finish_reason)
        if chat:
            return schemas.chat_response(rid, name, clean_output(text, built.task_family), reason, len(built.ids),
                                         job.completion_tokens, built.warnings)
        return schemas.text_response(rid, name, text, reason, len(built.ids), job.completion_tokens, built.warnings)

    async def stream(job: Job, events: asyncio.Queue, rid: str, name: str, built: Any, chat: bool,
                     include_usage: bool) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"
        try:
            if chat:
                yield sse(schemas.chat_chunk(rid, name, {"role": "assistant", "content": ""}, warnings=built.warnings))
            while True:
                event = await events.get()
                if event.type == "delta":
                    yield sse(schemas.chat_chunk(rid, name, {"content": event.text}) if chat
                              else schemas.text_chunk(rid, name, event.text))
                    continue
                if event.type == "error":
                    yield sse(error_body(event.status, event.text))
                    return
                reason = schemas.finish_reason_for_client(job.finish_reason)
                last = schemas.chat_chunk(rid, name, {}, reason) if chat else schemas.text_chunk(rid, name, "", reason)
                yield sse(last)
                if include_usage:
                    yield sse(schemas.usage_chunk(rid, name, obj, len(built.ids), job.completion_tokens))
                yield sse("[DONE]")
                return
        finally:
            job.cancel()

    @app.post("/v1/adapters", status_code=201)
    async def load_adapter(body: schemas.AdapterLoadRequest) -> dict[str, Any]:
        if body.name in RESERVED_NAMES:
            raise RequestError(400, f"{body.name!r} is reserved for the base model; choose another adapter name",
                               param="name")
        path = allowed_adapter_path(body.path, settings.adapter_roots)
        try:
            await asyncio.to_thread(registry.load_adapter, body.name, path)
        except AdapterExists as exc:
            raise RequestError(409, str(exc), param="name", code="adapter_exists") from None
        except LoratuneError as exc:
            raise RequestError(400, str(exc), param="path", code="adapter_not_loadable") from None
        return model_card(body.name)

    @app.delete("/v1/adapters/{name}")
    async def unload_adapter(name: str) -> dict[str, Any]:
        if name == BASE_NAME:
            raise RequestError(400, "the base model cannot be unloaded", param="name")
        try:
            await asyncio.to_thread(registry.unload_adapter, name)
        except ServeError as exc:
            raise RequestError(404, f"{exc}; loaded: {', '.join(registry.adapters) or 'none'}",
                               param="name", code="model_not_found") from None
        return {"id": name, "object": "model", "deleted": True}

    return app


def allowed_adapter_path(path: str, roots: tuple[Path, ...]) -> Path:
    """The adapter folder a client asked for, if it lies under one of `roots` (else a 403).

    Symlinks and `..` are resolved first, so a link inside a root that points outside is refused:
    a client must not make the server read arbitrary folders.
    """
    if not roots:
        raise RequestError(403, "loading adapters over HTTP is off on this server; start it with "
                           "--adapter-root DIR to allow folders under DIR", param="path",
                           code="adapter_loading_disabled")
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # NUL bytes, symlink loops
        raise RequestError(400, f"invalid adapter path: {exc}", param="path") from None
    allowed = [Path(root).expanduser().resolve() for root in roots]
    if not any(resolved == root or resolved.is_relative_to(root) for root in allowed):
        raise RequestError(403, f"the adapter path is outside the folders this server loads from "
                           f"({', '.join(map(str, allowed))})", param="path", code="adapter_path_forbidden")
    return resolved


def _check_port(host: str, port: int) -> None:
    """Fail in a second with a clear message, before loading any model, if the port is taken."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host") from None


def run_server(base: str | None, adapters: list[str], host: str = "127.0.0.1", port: int = 8000,
               api_key: str | None = None, cors: bool = False, adapter_roots: list[str] | None = None) -> None:
    """`loratune serve`: load the base and the `NAME=RUN_DIR` adapters, then serve until Ctrl-C."""
    import uvicorn

    roots = tuple(Path(root).expanduser() for root in adapter_roots or [])
    for root in roots:
        if not root.is_dir():
            raise ServeError(f"--adapter-root {root}: no such folder")
    _check_port(host, port)
    registry = open_registry(base, adapters)
    app = create_app(registry, ServeSettings(api_key=api_key or None, cors=cors, adapter_roots=roots))
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: serving on {host} without an API key; anyone who can reach this port can use "
              "the models and load adapters (pass --api-key or set LORATUNE_API_KEY)", file=sys.stderr)
    shown = "[::1]" if host == "::1" else host
    print(f"loratune serve: base {registry.base_source} ({registry.model_type}), models: {', '.join(registry.names())}\n"
          f"  chat page   http://{shown}:{port}/\n  OpenAI API  base_url=http://{shown}:{port}/v1", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
