"""TAT-QA (NExTplusplus/TAT-QA): questions over a financial table and its paragraphs.

The model reads the table, the text and the question (`loratune.tatqa.render.render_prompt`) and
learns to write `answer:` spans or a `calculation:`, then `scale:` (`render_target`); replies are
judged with the official TAT-QA metric by `loratune.tatqa.judge`.

TAT-QA ships as a JSON list of contexts, each holding several questions, while a Task maps one
row to one (prompt, target). `tatqa_rows` flattens contexts into one row per question (rows that
are already per-question, e.g. from JSONL, pass through unchanged), so the task's `expand_rows`
runs it after the train/eval split: a context's questions all land on one side of the split.
"""

from __future__ import annotations

from typing import Any

from loratune.errors import DataError
from loratune.tasks.base import Task
from loratune.tatqa.render import render_prompt, render_target

QUESTION_FIELDS = ("uid", "order", "question", "answer", "derivation", "answer_type", "answer_from",
                   "rel_paragraphs", "req_comparison", "scale")
_PROVENANCE = ("_source", "_line")


def _where(context: dict[str, Any], index: int) -> str:
    source = context.get("_source", "<data>")
    return f"{source}:{context.get('_line', index + 1)}"


def _context_rows(context: dict[str, Any], index: int) -> list[dict[str, Any]]:
    questions = context.get("questions")
    if not isinstance(questions, list):
        raise DataError(f"{_where(context, index)}: a TAT-QA context needs a 'questions' list")
    for key in ("table", "paragraphs"):
        if key not in context:
            raise DataError(f"{_where(context, index)}: TAT-QA context lacks '{key}'")
    shared = {"table": context["table"], "paragraphs": context["paragraphs"]}
    shared.update({key: context[key] for key in _PROVENANCE if key in context})
    rows = []
    for question in questions:
        if not isinstance(question, dict):
            raise DataError(f"{_where(context, index)}: each entry of 'questions' must be an object")
        rows.append({**shared, **question})
    return rows


def tatqa_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per question: each TAT-QA context (an object with `table`, `paragraphs` and
    `questions`) becomes one row per question, carrying the context's table and paragraphs and its
    `_source`/`_line`, so errors still name the context's place in the file. Other rows are kept."""
    rows: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        rows.extend(_context_rows(record, index) if "questions" in record else [record])
    return rows


def tatqa_row_from_message(message: str) -> dict[str, Any]:
    """A chat user's message: lines with `|` are table rows, the last other line is the question,
    and the lines between are the text."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    table = [[cell.strip() for cell in line.split("|")] for line in lines if "|" in line]
    others = [line for line in lines if "|" not in line]
    question = others[-1] if others else ""
    paragraphs = [{"order": n, "text": text} for n, text in enumerate(others[:-1], start=1)]
    return {"table": table, "paragraphs": paragraphs, "question": question}


TATQA = Task(
    name="tat-qa",
    columns=("table", "paragraphs", "question", "answer", "answer_type", "scale"),
    build_prompt=render_prompt,
    build_target=render_target,
    row_from_message=tatqa_row_from_message,
    description="Hybrid table + text financial QA (NExTplusplus/TAT-QA): rows from tatqa_rows(), one per "
                "question; the model writes answer spans or a calculation, and a scale.",
    family="tat-qa",
    expand_rows=tatqa_rows,
)
