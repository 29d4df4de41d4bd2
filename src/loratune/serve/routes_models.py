"""Routes about the served models: the chat page, /health, /v1/models, and loading or unloading
adapters at run time (POST /v1/adapters, DELETE /v1/adapters/{name})."""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from loratune.errors import AdapterExists, LoratuneError, RequestError, ServeError
from loratune.serve import schemas
from loratune.serve.guard import allowed_adapter_path
from loratune.serve.prompts import PromptProfile
from loratune.serve.registry import BASE_NAME, RESERVED_NAMES, ModelRegistry
from loratune.serve.settings import ServerState, server_state

router = APIRouter()


def served_name(registry: ModelRegistry, model: str) -> str:
    """The served model a request names (an alias resolves), or a 404 listing the served ones."""
    name = registry.resolve_name(model)
    if name is None:
        raise RequestError(404, f"the model {model!r} does not exist; served models: {', '.join(registry.names())}",
                           param="model", code="model_not_found")
    return name


def served_profile(registry: ModelRegistry, model: str) -> tuple[str, PromptProfile]:
    name = served_name(registry, model)
    try:
        return name, registry.profile(name)
    except KeyError:  # unloaded between the two lookups
        raise RequestError(404, f"the model {model!r} was just unloaded", param="model",
                           code="model_not_found") from None


def model_card(registry: ModelRegistry, name: str) -> dict[str, Any]:
    profile = registry.profile(name)
    created = registry.created if name == BASE_NAME else registry.adapters[name].created
    return {
        "id": name, "object": "model", "created": created, "owned_by": "loratune",
        "base_model": registry.base_source, "task": profile.task.name if profile.task else None,
        "task_family": profile.task_family, "multi_turn": profile.multi_turn,
    }


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(resources.files("loratune.serve").joinpath("page.html").read_text(encoding="utf-8"))


@router.get("/health")
async def health(server: ServerState = Depends(server_state)) -> dict[str, Any]:
    return {"status": "ok", "queued": server.scheduler.queued, "running": server.scheduler.running}


@router.get("/v1/models")
async def list_models(server: ServerState = Depends(server_state)) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(server.registry, name) for name in server.registry.names()]}


@router.get("/v1/models/{model}")
async def get_model(model: str, server: ServerState = Depends(server_state)) -> dict[str, Any]:
    return model_card(server.registry, served_name(server.registry, model))


@router.post("/v1/adapters", status_code=201)
async def load_adapter(body: schemas.AdapterLoadRequest, server: ServerState = Depends(server_state)) -> dict[str, Any]:
    if body.name in RESERVED_NAMES:
        raise RequestError(400, f"{body.name!r} is reserved for the base model; choose another adapter name",
                           param="name")
    path = allowed_adapter_path(body.path, server.settings.adapter_roots)
    try:
        await asyncio.to_thread(server.registry.load_adapter, body.name, path)
    except AdapterExists as exc:
        raise RequestError(409, str(exc), param="name", code="adapter_exists") from None
    except LoratuneError as exc:
        raise RequestError(400, str(exc), param="path", code="adapter_not_loadable") from None
    return model_card(server.registry, body.name)


@router.delete("/v1/adapters/{name}")
async def unload_adapter(name: str, server: ServerState = Depends(server_state)) -> dict[str, Any]:
    if name == BASE_NAME:
        raise RequestError(400, "the base model cannot be unloaded", param="name")
    try:
        await asyncio.to_thread(server.registry.unload_adapter, name)
    except ServeError as exc:
        raise RequestError(404, f"{exc}; loaded: {', '.join(server.registry.adapters) or 'none'}",
                           param="name", code="model_not_found") from None
    return {"id": name, "object": "model", "deleted": True}
