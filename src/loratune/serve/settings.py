"""The server's limits, and the state its routes share (`app.state.server`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from loratune.serve.registry import ModelRegistry
from loratune.serve.scheduler import Scheduler


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


@dataclass
class ServerState:
    """What every route works with: the models, the generation queue, the limits."""

    registry: ModelRegistry
    scheduler: Scheduler
    settings: ServeSettings


def server_state(request: Request) -> ServerState:
    return request.app.state.server
