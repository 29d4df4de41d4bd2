"""The prompt a served model sees: the same text training built, from a client's raw message.

An adapter trained by loratune saved its task and prompt settings (`adapter/loratune.json`),
so a client sends only the question (and, for SQL, the CREATE TABLE statements) and the server
renders the training prompt around it, truncated to the training limit as training did. The base
model (and adapters without loratune metadata) get the conversation through the model's own
chat template. `/v1/completions` prompts go to the model verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loratune.data import cut_prompt, render_prompt, wants_chat_template
from loratune.errors import LoratuneError, RequestError
from loratune.inference.encoding import prompt_ids
from loratune.tasks import Task, get_task

DEFAULT_CONTEXT = 2048
"""Context used when neither the config nor the tokenizer states one."""


@dataclass(frozen=True)
class PromptProfile:
    """How one served model turns messages into a prompt."""

    task: Task | None
    """The training task; None for the base model and adapters without loratune metadata."""
    use_chat_template: bool
    system_prompt: str | None = None
    max_source_tokens: int | None = None
    """Training's prompt limit: longer task prompts are cut to it, as training cut them."""

    @property
    def task_family(self) -> str:
        return self.task.family if self.task else "text"

    @property
    def multi_turn(self) -> bool:
        """Whether earlier turns reach the model (chat tasks and chat-template models do)."""
        return self.task.family == "chat" if self.task else self.use_chat_template


@dataclass
class BuiltPrompt:
    text: str
    ids: list[int]
    task_family: str = "text"
    warnings: list[str] = field(default_factory=list)


def profile_from_meta(meta: dict[str, Any], tokenizer: Any, model_type: str) -> PromptProfile:
    """The prompt profile of an adapter from its `loratune.json` (empty dict: a plain peft adapter)."""
    task = None
    if meta.get("task"):
        try:
            task = get_task(str(meta["task"]))
        except LoratuneError:
            task = None  # an adapter from a newer loratune: serve it like the base model
    return PromptProfile(
        task=task,
        use_chat_template=wants_chat_template(tokenizer, model_type, meta.get("use_chat_template")),
        system_prompt=meta.get("system_prompt"),
        max_source_tokens=meta.get("max_source_tokens"),
    )


def base_profile(tokenizer: Any, model_type: str) -> PromptProfile:
    return PromptProfile(task=None, use_chat_template=wants_chat_template(tokenizer, model_type, None))


def context_limit(model: Any, tokenizer: Any, configured: int | None = None) -> int:
    """Longest prompt + answer in tokens: the model's positions, else the tokenizer's limit."""
    config = getattr(model, "config", None)
    limit = None
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            limit = value
            break
    if limit is None:
        model_max = getattr(tokenizer, "model_max_length", None)
        limit = model_max if isinstance(model_max, int) and 0 < model_max < 1_000_000 else DEFAULT_CONTEXT
    return min(limit, configured) if configured else limit


def _message_text(content: Any) -> str:
    """OpenAI content is a string or a list of parts; only text parts are understood here."""
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
        else:
            raise RequestError(400, "only text content parts are supported", param="messages")
    return "".join(parts)


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": _message_text(m.get("content"))} for m in messages]


def _last_user_message(messages: list[dict[str, str]]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    raise RequestError(400, "messages must contain at least one user message", param="messages")


def build_chat_prompt(profile: PromptProfile, tokenizer: Any, model_type: str, messages: list[dict[str, Any]]) -> BuiltPrompt:
    """Render a chat request as the model's prompt (see module doc)."""
    messages = normalize_messages(messages)
    warnings: list[str] = []
    task = profile.task
    if task is None:
        if profile.use_chat_template:
            text = render_prompt(tokenizer, messages, use_chat_template=True, system_prompt=None)
        elif len(messages) == 1:
            text = messages[0]["content"]  # e.g. T5: the message itself is the input
        else:
            text = render_prompt(tokenizer, messages, use_chat_template=False, system_prompt=None)
        return BuiltPrompt(text, prompt_ids(tokenizer, model_type, text), "text", warnings)

    if task.family == "chat":
        prompt: Any = task.prompt({"messages": messages})
    else:
        # Task adapters learned single-turn prompts: only the latest user message is the input.
        row = task.row_from_message(_last_user_message(messages))
        if task.family == "sql" and task.build_schema is not None and not task.build_schema(row).strip():
            warnings.append(
                "no CREATE TABLE statement found in the message; this SQL adapter expects the "
                "question followed by the tables' CREATE TABLE statements"
            )
        prompt = task.prompt(row)
    if profile.max_source_tokens:
        original = _prompt_tokens(tokenizer, prompt)
        prompt, cut = cut_prompt(tokenizer, prompt, profile.max_source_tokens)
        if cut:
            warnings.append(
                f"the prompt was truncated to {profile.max_source_tokens} tokens (it had {original}), "
                "the adapter's max_source_tokens from training"
            )
    text = render_prompt(
        tokenizer, prompt, use_chat_template=profile.use_chat_template, system_prompt=profile.system_prompt
    )
    return BuiltPrompt(text, prompt_ids(tokenizer, model_type, text), task.family, warnings)


def _prompt_tokens(tokenizer: Any, prompt: Any) -> int:
    texts = [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def build_completion_prompt(tokenizer: Any, model_type: str, text: str) -> BuiltPrompt:
    """`/v1/completions`: the prompt text goes to the model as it is."""
    return BuiltPrompt(text, prompt_ids(tokenizer, model_type, text), "text", [])


def check_length(
    prompt_tokens: int, max_tokens: int | None, *, model_type: str, limit: int, default_max_tokens: int,
    prompt_param: str = "messages",
) -> int:
    """The answer's token budget, or a 400 when the prompt (plus the requested answer) is too long.

    Causal models share one context between prompt and answer; seq2seq encoders take the prompt
    and the decoder the answer, so each must fit on its own.
    """
    if prompt_tokens > limit or (model_type == "causal" and prompt_tokens >= limit):
        raise RequestError(
            400,
            f"the prompt has {prompt_tokens} tokens, over this model's context of {limit} tokens; "
            "shorten the prompt",
            param=prompt_param, code="context_length_exceeded",
        )
    room = limit - prompt_tokens if model_type == "causal" else limit
    if max_tokens is None:
        return min(default_max_tokens, room)
    if max_tokens > room:
        raise RequestError(
            400,
            f"this model's context is {limit} tokens; the prompt has {prompt_tokens} and max_tokens asks "
            f"for {max_tokens} more; lower max_tokens to at most {room}",
            param="max_tokens", code="context_length_exceeded",
        )
    return max_tokens
