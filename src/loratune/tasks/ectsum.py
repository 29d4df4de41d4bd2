"""ECTSum (rajdeep345/ECTSum): an earnings-call transcript -> its Reuters-style bullet summary.

Rows are ECTSum's JSONL (`id`, `document`: the transcript, one sentence a line; `summary`: the
bullets, one a line). The target, and so the reference evaluation scores against, is `summary`
unchanged. A transcript runs ~3,700 tokens, so the model reads a part of it within
`ectsum.select.BUDGET_WORDS` words: `ectsum` the sentences `select_sentences` picks (figures,
results and outlook words, position), `ectsum-lead` the transcript's first words, the baseline
that choice is measured against (bench/ectsum_input.py). Family `ectsum`: evaluation adds ECTSum's
numeric precision to ROUGE.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from loratune.ectsum.select import BUDGET_WORDS, lead_words, select_sentences
from loratune.tasks.base import Task

INSTRUCTION = "Summarize the results and outlook of this earnings call in a few one-line bullets."


@lru_cache(maxsize=4096)
def selected_sentences(document: str) -> str:
    # A row's prompt is built several times (column check, tokenizing, evaluation) and choosing
    # costs ~20 ms a transcript; the same document always gives the same choice.
    return select_sentences(document, BUDGET_WORDS)


def _prompt_from(read: Callable[[str], str]) -> Callable[[dict[str, Any]], str]:
    def build(row: dict[str, Any]) -> str:
        return f"{INSTRUCTION}\nTranscript:\n{read(str(row['document']))}\nSummary:"
    return build


def ectsum_row_from_message(message: str) -> dict[str, Any]:
    """A chat user's message is the transcript."""
    return {"document": message.strip()}


ECTSUM = Task(
    name="ectsum",
    columns=("document", "summary"),
    build_prompt=_prompt_from(selected_sentences),
    build_target=lambda row: str(row["summary"]),
    row_from_message=ectsum_row_from_message,
    description=f"Earnings-call summaries (rajdeep345/ECTSum): document -> summary bullets; the model reads "
                f"the transcript's sentences with the most figures and outlook words, {BUDGET_WORDS} words.",
    family="ectsum",
)

ECTSUM_LEAD = Task(
    name="ectsum-lead",
    columns=("document", "summary"),
    build_prompt=_prompt_from(lambda document: lead_words(document, BUDGET_WORDS)),
    build_target=lambda row: str(row["summary"]),
    row_from_message=ectsum_row_from_message,
    description=f"As ectsum, but the model reads the transcript's first {BUDGET_WORDS} words.",
    family="ectsum",
)
