"""finance-alpaca (gbharti/finance-alpaca): instruction / input / output, the original's prompts."""

from __future__ import annotations

from typing import Any

from loratune.tasks.base import Task


def finance_prompt(row: dict[str, Any]) -> str:
    # The original recipe's two prompt shapes, kept verbatim so results are comparable.
    context = (row.get("input") or "").strip()
    instruction = str(row["instruction"]).strip()
    if not context:
        return f"{instruction}\nAnswer: "
    return f"Given the context.\n{context}\n{instruction}\nAnswer: "


def finance_row_from_message(message: str) -> dict[str, Any]:
    return {"instruction": message.strip(), "input": ""}


FINANCE_ALPACA = Task(
    name="finance-alpaca",
    columns=("instruction", "output"),
    build_prompt=finance_prompt,
    build_target=lambda row: str(row["output"]).strip(),
    row_from_message=finance_row_from_message,
    description="Financial QA: instruction (+ optional input context) -> output.",
    family="qa",
)
