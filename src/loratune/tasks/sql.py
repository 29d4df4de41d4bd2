"""Text-to-SQL formats: sql-create-context (question/context/answer) and Llama-2-SQL.

Both render the same prompt, so an adapter trained on sql-create-context can continue on
Llama-2-SQL rows (the original's two-stage recipe) without the prompt shifting under it.
"""

from __future__ import annotations

import re
from typing import Any

from loratune.tasks.base import Task


def sql_prompt(row: dict[str, Any]) -> str:
    return (
        "Write the SQLite query that answers the question, using only the tables below.\n"
        f"Tables:\n{str(row['context']).strip()}\n"
        f"Question: {str(row['question']).strip()}\n"
        "SQL:"
    )


_SECTION = re.compile(r"###\s*(Instruction|Input|Response)\s*:", re.IGNORECASE)


def parse_llama2_sql(text: str) -> dict[str, str]:
    """Split a Llama-2-SQL `input` into question and context, as the original did: the text
    between `### Instruction:` and `### Input:` is the question, between `### Input:` and
    `### Response:` (or the end) the CREATE TABLE context. The preamble is dropped."""
    parts: dict[str, str] = {}
    matches = list(_SECTION.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        parts[match.group(1).lower()] = text[match.end() : end].strip()
    if "instruction" not in parts or "input" not in parts:
        raise ValueError("expected '### Instruction:' and '### Input:' sections in 'input'")
    return {"question": parts["instruction"], "context": parts["input"]}


def llama2_prompt(row: dict[str, Any]) -> str:
    return sql_prompt(parse_llama2_sql(str(row["input"])))


_CREATE = re.compile(r"CREATE\s+TABLE\b[^;]*;?", re.IGNORECASE)


def sql_row_from_message(message: str) -> dict[str, Any]:
    """A chat user sends the question and, for SQL, the CREATE TABLE statements (in any order)."""
    statements = [m.group(0).strip().rstrip(";") for m in _CREATE.finditer(message)]
    question = _CREATE.sub("", message).strip()
    return {"question": question, "context": "; ".join(statements)}


def _llama2_input(row: dict[str, Any]) -> str:
    return f"### Instruction:\n{row['question']}\n\n### Input:\n{row['context']}\n\n### Response:\n"


SQL_CREATE_CONTEXT = Task(
    name="sql-create-context",
    columns=("question", "context", "answer"),
    build_prompt=sql_prompt,
    build_target=lambda row: str(row["answer"]).strip(),
    row_from_message=sql_row_from_message,
    description="Text-to-SQL: question + CREATE TABLE context -> SQL (b-mc2/sql-create-context).",
    family="sql",
    build_schema=lambda row: str(row["context"]),
)

LLAMA2_SQL = Task(
    name="llama2-sql",
    columns=("input", "output"),
    build_prompt=llama2_prompt,
    build_target=lambda row: str(row["output"]).strip(),
    row_from_message=lambda message: {"input": _llama2_input(sql_row_from_message(message))},
    description="Text-to-SQL in the Llama-2-SQL shape (### Instruction / ### Input / ### Response).",
    family="sql",
    build_schema=lambda row: parse_llama2_sql(str(row["input"]))["context"],
)
