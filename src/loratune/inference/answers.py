"""Answer extraction: the part of a model's output that a metric judges.

Chat models wrap answers in fences and explanations; evaluation, chat and serving cut the answer the
same way here, so a score measures the answer, not its formatting.
"""

from __future__ import annotations

import re

from loratune.errors import AnswerError
from loratune.tatqa.render import SPAN_SEPARATOR, parse_model_answer

_FENCE = re.compile(r"```(?:sql|sqlite)?\s*\n?(.*?)(?:```|$)", re.IGNORECASE | re.DOTALL)
_SQL_START = re.compile(r"\b(SELECT|WITH)\b", re.IGNORECASE)


def extract_sql(text: str) -> str:
    """The first SQL statement in a model's answer.

    Chat models often wrap SQL in a ```sql fence or add an explanation; we take the fenced code
    when present, start at the first SELECT/WITH, and stop at the first `;` or blank line. This
    is generous to the base model on purpose, so the comparison measures SQL, not formatting.
    """
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    start = _SQL_START.search(text)
    if start:
        text = text[start.start():]
    text = text.split(";")[0]
    text = re.split(r"\n\s*\n", text)[0]
    return " ".join(text.split())


def clean_output(text: str, task_family: str) -> str:
    return extract_sql(text) if task_family == "sql" else text.strip()


def present_answer(text: str, task_family: str) -> str:
    """What a chat user is shown: the cleaned answer, and for TAT-QA the computed value with the
    model's calculation beside it (`41.1 million (calculation: 109.0 - 58.3 = 50.7)` would hide that
    the model's own arithmetic was wrong; loratune computes it). Unreadable answers are shown as written."""
    text = clean_output(text, task_family)
    if task_family != "tat-qa":
        return text
    try:
        answer, scale, calculation = parse_model_answer(text)
    except AnswerError:
        return text
    shown = SPAN_SEPARATOR.join(answer) if isinstance(answer, list) else (
        f"{answer:.2f}".rstrip("0").rstrip(".") if isinstance(answer, float) else answer)  # as the metric rounds
    shown = f"{shown}%" if scale == "percent" else f"{shown} {scale}".strip()
    return f"{shown} (calculation: {calculation})" if calculation else shown
