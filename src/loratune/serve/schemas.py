"""OpenAI's wire format: request models (validated by pydantic) and response/chunk/error bodies.

Only what loratune implements is modelled; unknown request fields are ignored, as OpenAI's
clients send several (`user`, `seed`, ...) that change nothing here. Response dicts follow
OpenAI's shapes so the official client parses them; loratune adds `warnings` when it changed
the prompt (e.g. truncated it to the adapter's training limit).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
"""Adapter names: letters, digits, `-` and `_` (peft keeps adapters in module dicts, so no dots)."""

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    error_type = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    # Messages may quote what a client sent; a lone surrogate in it would make the JSON encoder fail.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


# ---------------------------------------------------------------- requests


def _unicode(value: Any) -> Any:
    """JSON can carry lone UTF-16 surrogates (`"\\ud800"`), which no tokenizer can encode: refuse
    them here, as a 400 naming the field, instead of failing inside the tokenizer."""
    texts = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] if isinstance(
        value, list) else []
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (it holds a lone surrogate such as \\ud800)") from None
    return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = ""

    @field_validator("content")
    @classmethod
    def _check_content(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                _unicode([v for v in part.values() if isinstance(v, str)])
            return value
        return _unicode(value)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class GenerationParams(BaseModel):
    """Parameters shared by chat and text completions, with OpenAI's ranges and defaults."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    """0 is greedy; OpenAI's default (and ours) is 1."""
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, validate_default=True)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="one answer per request")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> list[str]:
        stops = _unicode([value] if isinstance(value, str) else list(value or []))
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(GenerationParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(GenerationParams):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str:
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("send one prompt per request (a list must hold exactly one string)")
            value = value[0]
        return _unicode(value)

    @property
    def answer_tokens(self) -> int | None:
        return self.max_tokens


class AdapterLoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ADAPTER_NAME_PATTERN)
    path: str = Field(min_length=1)


# ---------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _with_warnings(body: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    if warnings:
        body["warnings"] = list(warnings)
    return body


def chat_response(
    rid: str, model: str, content: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
    warnings: list[str],
) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": finish_reason,
        "logprobs": None,
    }
    body = {
        "id": rid, "object": "chat.completion", "created": now(), "model": model,
        "choices": [choice], "usage": usage(prompt_tokens, completion_tokens),
    }
    return _with_warnings(body, warnings)


def chat_chunk(
    rid: str, model: str, delta: dict[str, Any], finish_reason: str | None = None, warnings: list[str] = (),
) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    body = {"id": rid, "object": "chat.completion.chunk", "created": now(), "model": model, "choices": [choice]}
    return _with_warnings(body, list(warnings))


def text_response(
    rid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
    warnings: list[str],
) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
    body = {
        "id": rid, "object": "text_completion", "created": now(), "model": model,
        "choices": [choice], "usage": usage(prompt_tokens, completion_tokens),
    }
    return _with_warnings(body, warnings)


def text_chunk(
    rid: str, model: str, text: str, finish_reason: str | None = None, warnings: list[str] = (),
) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
    body = {"id": rid, "object": "text_completion", "created": now(), "model": model, "choices": [choice]}
    return _with_warnings(body, list(warnings))


def usage_chunk(rid: str, model: str, obj: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The last chunk when `stream_options.include_usage` is set: no choices, just usage."""
    return {"id": rid, "object": obj, "created": now(), "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event, as OpenAI streams them (`data: {...}` then a blank line)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def finish_reason_for_client(reason: str | None) -> str:
    """OpenAI knows `stop` and `length`; a cancelled job never reaches a client."""
    return "length" if reason == "length" else "stop"
