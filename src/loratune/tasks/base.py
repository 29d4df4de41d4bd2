"""The Task record shared by every task format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

Message = dict[str, str]
# A prompt is plain text, or (for chat data) the conversation before the answer.
Prompt = Union[str, list[Message]]


@dataclass(frozen=True)
class Task:
    """How rows of one dataset format become (prompt, target) pairs.

    `columns` are checked on every row before training, so a missing column is reported with
    the file and line instead of failing deep inside tokenization.
    """

    name: str
    columns: tuple[str, ...]
    build_prompt: Callable[[dict[str, Any]], Prompt]
    build_target: Callable[[dict[str, Any]], str]
    row_from_message: Callable[[str], dict[str, Any]]
    """Turn a chat user's raw message into a row, so serving builds the training prompt."""
    description: str = ""
    family: str = "text"
    """Every task gets ROUGE and friends; `sql` tasks also execution metrics, `tat-qa` TAT-QA's EM and
    F1, `ectsum` ECTSum's numeric precision."""
    build_schema: Callable[[dict[str, Any]], str] | None = None
    """For SQL tasks: the CREATE TABLE statements of a row, used to execute predictions."""
    expand_rows: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None
    """For files whose records hold several examples (a TAT-QA context and its questions): one row
    per example. Applied after the train/eval split, so one record's examples stay on one side."""

    def prompt(self, row: dict[str, Any]) -> Prompt:
        return self.build_prompt(row)

    def target(self, row: dict[str, Any]) -> str:
        return self.build_target(row)
