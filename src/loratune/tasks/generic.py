"""Generic formats: prompt/completion pairs and chat `messages` conversations."""

from __future__ import annotations

from typing import Any

from loratune.tasks.base import Message, Task


def _messages(row: dict[str, Any]) -> list[Message]:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError("each message needs 'role' and 'content'")
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's answer")
    return messages


def chat_prompt(row: dict[str, Any]) -> list[Message]:
    """Everything before the final assistant turn (all of it when the row has no answer yet)."""
    messages = row["messages"]
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        messages = _messages(row)[:-1]
    return [{"role": m["role"], "content": str(m["content"])} for m in messages]


def chat_target(row: dict[str, Any]) -> str:
    return str(_messages(row)[-1]["content"]).strip()


PROMPT_COMPLETION = Task(
    name="prompt-completion",
    columns=("prompt", "completion"),
    build_prompt=lambda row: str(row["prompt"]),
    build_target=lambda row: str(row["completion"]).strip(),
    row_from_message=lambda message: {"prompt": message},
    description="Any prompt -> completion pairs.",
)

CHAT_MESSAGES = Task(
    name="messages",
    columns=("messages",),
    build_prompt=chat_prompt,
    build_target=chat_target,
    row_from_message=lambda message: {"messages": [{"role": "user", "content": message}]},
    description="Chat conversations; the model learns the final assistant turn.",
    family="chat",
)
