"""The HTTP server: an OpenAI-compatible API over one base model and its LoRA adapters.

Routes (`routes_completions`, `routes_models`): POST /v1/chat/completions, POST /v1/completions
(both stream as server-sent events in OpenAI's chunk format), GET /v1/models, POST /v1/adapters and
DELETE /v1/adapters/{name} (load/unload at run time), GET /health, and the web chat page at `/`.

Requests never generate on the event loop: they become `Job`s in the `Scheduler`'s bounded queue
(429 when full) and a worker thread generates them in batches, so /health and new requests are
answered while a long generation runs. Every bad request gets an OpenAI-style error body and a
4xx status (`guard`), and the server carries on.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from loratune.errors import ServeError
from loratune.inference.engine import DecodeEngine
from loratune.serve import routes_completions, routes_models
from loratune.serve.guard import RequestGuard, install_error_handlers
from loratune.serve.registry import ModelRegistry, open_registry
from loratune.serve.scheduler import Scheduler
from loratune.serve.settings import ServerState, ServeSettings

__all__ = ["ServeSettings", "create_app", "run_server"]


def create_app(registry: ModelRegistry, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app over `registry`; the scheduler thread runs while the app is up."""
    settings = settings or ServeSettings()
    if settings.max_context:
        registry.context = min(registry.context, settings.max_context)
    scheduler = Scheduler(DecodeEngine(registry), max_batch_size=settings.max_batch_size,
                          queue_size=settings.queue_size, batch_wait_s=settings.batch_wait_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="loratune", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = ServerState(registry, scheduler, settings)
    app.state.registry = registry
    app.state.scheduler = scheduler
    install_error_handlers(app)
    app.add_middleware(RequestGuard, settings=settings)
    if settings.cors:
        app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    app.include_router(routes_models.router)
    app.include_router(routes_completions.router)
    return app


def check_port(host: str, port: int) -> None:
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
    roots = tuple(Path(root).expanduser() for root in adapter_roots or [])
    for root in roots:
        if not root.is_dir():
            raise ServeError(f"--adapter-root {root}: no such folder")
    check_port(host, port)
    registry = open_registry(base, adapters)
    app = create_app(registry, ServeSettings(api_key=api_key or None, cors=cors, adapter_roots=roots))
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: serving on {host} without an API key; anyone who can reach this port can use "
              "the models and load adapters (pass --api-key or set LORATUNE_API_KEY)", file=sys.stderr)
    shown = "[::1]" if host == "::1" else host
    print(f"loratune serve: base {registry.base_source} ({registry.model_type}), models: {', '.join(registry.names())}\n"
          f"  chat page   http://{shown}:{port}/\n  OpenAI API  base_url=http://{shown}:{port}/v1", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
