"""POST /v1/chat/completions and POST /v1/completions, answered whole or streamed as server-sent
events in OpenAI's chunk format.

A request never generates on the event loop: it becomes a `Job` in the scheduler's bounded queue
(429 when full), and the generating thread sends its events back through an asyncio queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from loratune.errors import QueueFull, RequestError
from loratune.inference.answers import present_answer
from loratune.inference.jobs import Job, JobEvent, Sampling
from loratune.serve import schemas
from loratune.serve.guard import error_response
from loratune.serve.prompts import build_chat_prompt, build_completion_prompt, check_length
from loratune.serve.routes_models import served_name, served_profile
from loratune.serve.schemas import error_body, sse
from loratune.serve.settings import ServerState, server_state

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: schemas.ChatCompletionRequest, server: ServerState = Depends(server_state)) -> Any:
    registry = server.registry
    name, profile = served_profile(registry, body.model)
    messages = [m.model_dump() for m in body.messages]
    built = build_chat_prompt(profile, registry.tokenizer, registry.model_type, messages)
    return await answer(server, body, name, built, chat=True)


@router.post("/v1/completions")
async def completions(body: schemas.CompletionRequest, server: ServerState = Depends(server_state)) -> Any:
    registry = server.registry
    name = served_name(registry, body.model)
    built = build_completion_prompt(registry.tokenizer, registry.model_type, body.prompt)
    return await answer(server, body, name, built, chat=False)


def _token_budget(server: ServerState, body: Any, built: Any, chat: bool) -> int:
    """The answer's token limit: the request's (capped by the server) within the model's context."""
    settings, registry = server.settings, server.registry
    requested = body.answer_tokens
    if requested is not None and requested > settings.max_tokens_limit:
        raise RequestError(400, f"max_tokens is {requested}, over this server's limit of "
                           f"{settings.max_tokens_limit}", param="max_tokens")
    return check_length(len(built.ids), requested, model_type=registry.model_type, limit=registry.context,
                        default_max_tokens=settings.default_max_tokens, prompt_param="messages" if chat else "prompt")


async def answer(server: ServerState, body: Any, name: str, built: Any, *, chat: bool) -> Any:
    budget = _token_budget(server, body, built, chat)
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
    scheduler = server.scheduler
    scheduler.start()  # no-op once running (the lifespan starts it; bare ASGI test clients may not)
    try:
        scheduler.submit(job)
    except QueueFull as exc:
        return error_response(429, f"the server is busy ({exc}); retry shortly",
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
        return error_response(event.status, event.text)
    text = job.text  # complete: the job finished before its final event was sent
    reason = schemas.finish_reason_for_client(job.finish_reason)
    if chat:
        return schemas.chat_response(rid, name, present_answer(text, built.task_family), reason, len(built.ids),
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
