"""What stands in front of every route: the API key, the body size limit, the OpenAI-style error
body for every failure (4xx for a bad request, never a traceback), and the adapter-folder check."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loratune.errors import RequestError
from loratune.serve.schemas import error_body
from loratune.serve.settings import ServeSettings

PUBLIC_PATHS = {"/health", "/"}
"""Reachable without the API key: the health probe, and the chat page (static HTML with no
data in it; every API call the page makes carries the key)."""


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the server's limit of {limit} bytes")


class RequestGuard:
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
                await send_json(scope, send, 401, error_body(
                    401, f"{message}; send it as 'Authorization: Bearer KEY'", code="invalid_api_key"))
                return
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await send_json(scope, send, 413, error_body(413, BodyTooLarge(limit).detail, code="request_too_large"))
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)  # FastAPI re-raises HTTPExceptions from body reading
            return message

        await self.app(scope, limited_receive, send)


async def send_json(scope: dict, send: Any, status: int, body: dict) -> None:
    await JSONResponse(body, status_code=status)(scope, None, send)


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if "json" not in request.headers.get("content-type", "").lower():  # FastAPI then never parsed the body
            return error_response(400, "send the request body as JSON, with 'Content-Type: application/json'")
        message, param = _validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(404, f"no route {request.method} {request.url.path}", code="unknown_url")
        code = "request_too_large" if exc.status_code == 413 else None
        return error_response(exc.status_code, str(exc.detail), code=code)

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


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
