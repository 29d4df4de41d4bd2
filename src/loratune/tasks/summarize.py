"""CNN/DailyMail-style summarization: article -> highlights."""

from __future__ import annotations

from typing import Any

from loratune.tasks.base import Task


def summary_prompt(row: dict[str, Any]) -> str:
    return f"Summarize the following article:\n{str(row['article']).strip()}\nSummary:"


CNN_DAILYMAIL = Task(
    name="cnn-dailymail",
    columns=("article", "highlights"),
    build_prompt=summary_prompt,
    build_target=lambda row: str(row["highlights"]).strip(),
    row_from_message=lambda message: {"article": message.strip()},
    description="Summarization: article -> highlights (CNN/DailyMail columns).",
    family="summary",
)
