"""TAT-QA as text: the prompt a model reads, the target it learns, and the parser for its answers.

The model answers in two lines, the same for every question type:

    answer: <span>                      a span or a count            answer: 2019
    answer: <span> | <span> | <span>    several spans (multi-span)   answer: fixed-price | cost-plus
    calculation: <arithmetic>           an arithmetic question       calculation: (104 - 89) / 89 * 100
    scale: <none|thousand|million|billion|percent>

Arithmetic answers are calculations, computed by `calc.evaluate`: the model copies numbers from the
table and names the operations, and the arithmetic itself is exact instead of generated digit by
digit (TAT-QA's own `derivation` field is such a calculation). A calculation evaluates to the answer's number in the
answer's scale: for a percent answer it is the percentage itself (16.85, not 0.1685), so the dev
set's derivations that stop at the fraction get `* 100` in the target. Spans are separated by
` | ` because no dev-set span contains a `|`, while one contains a `;`.
"""

from __future__ import annotations

import re
from typing import Any

from loratune.errors import AnswerError
from loratune.tatqa.calc import evaluate, tokenize

ModelAnswer = str | list[str] | float
SPAN_SEPARATOR = " | "
NO_SCALE = "none"
SCALE_WORDS = {NO_SCALE: "", "": "", "thousand": "thousand", "thousands": "thousand", "million": "million",
               "millions": "million", "billion": "billion", "billions": "billion", "percent": "percent",
               "percentage": "percent", "%": "percent"}
INSTRUCTION = (
    "Answer the question from the table and the text. Reply with `answer: <span>` (several spans "
    "separated by ` | `) or, when the answer must be computed, `calculation: <arithmetic>`; then "
    "`scale: <none|thousand|million|billion|percent>`."
)
_FIELD = re.compile(r"^\s*(answer|calculation|scale)\s*:(.*)$", re.IGNORECASE | re.MULTILINE)


# ---------------------------------------------------------------- the prompt


def table_rows(table: Any) -> list[list[str]]:
    """The rows of a TAT-QA table, given as the dataset's {uid, table} object or as the rows alone."""
    rows = table.get("table") if isinstance(table, dict) else table
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise ValueError("'table' must be a list of rows (lists of cells) or an object with one under 'table'")
    return rows


def render_table(table: Any) -> str:
    """One line per row, cells joined by ` | ` (empty cells stay, so columns line up)."""
    return "\n".join(" | ".join(str(cell).strip() for cell in row) for row in table_rows(table))


def render_paragraphs(paragraphs: list[dict[str, Any]]) -> str:
    """The paragraphs' text in their `order`, one per line."""
    if not isinstance(paragraphs, list) or not all(isinstance(p, dict) and "text" in p for p in paragraphs):
        raise ValueError("'paragraphs' must be a list of {order, text} objects")
    ordered = sorted(paragraphs, key=lambda paragraph: int(paragraph.get("order", 0)))
    return "\n".join(str(paragraph["text"]).strip() for paragraph in ordered)


def render_prompt(row: dict[str, Any]) -> str:
    """The instruction, the table, the paragraphs and the question: everything before the answer."""
    return (f"{INSTRUCTION}\nTable:\n{render_table(row['table'])}\nText:\n{render_paragraphs(row['paragraphs'])}\n"
            f"Question: {str(row['question']).strip()}\n")


# ---------------------------------------------------------------- the target


def _has_top_level_sum(expression: str) -> bool:
    """Whether a binary + or - sits outside all brackets, so `* 100` appended would bind to its last
    term only."""
    depth, previous = 0, None
    for token in tokenize(expression):
        if token.kind in "([":
            depth += 1
        elif token.kind in ")]":
            depth -= 1
        elif token.kind in "+-" and depth == 0 and previous is not None and previous.kind in ("number", ")", "]"):
            return True
        previous = token
    return False


def times_100(expression: str) -> str:
    """`expression * 100`, bracketed when needed so the multiplication covers all of it."""
    try:
        bare = not _has_top_level_sum(expression)
    except AnswerError:
        bare = False
    return f"{expression} * 100" if bare else f"({expression}) * 100"


def number_text(value: float) -> str:
    """A number as plain decimal text: no exponent, no trailing `.0` (12.0 -> "12")."""
    text = f"{value:.10f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _matches(expression: str, scale: str, gold: float) -> bool:
    try:
        return round(evaluate(expression, scale), 2) == round(gold, 2)
    except AnswerError:
        return False


def arithmetic_target(question: dict[str, Any]) -> tuple[str, str]:
    """The calculation an arithmetic question's target teaches, and where it came from:
    "derivation" (as written), "derivation * 100" (a percent written as a fraction), or
    "gold number" when the derivation does not compute the gold answer (then the number itself)."""
    derivation = " ".join(str(question.get("derivation", "")).split())
    gold, scale = float(question["answer"]), question["scale"]
    if _matches(derivation, scale, gold):
        return derivation, "derivation"
    if scale == "percent" and derivation and _matches(times_100(derivation), scale, gold):
        return times_100(derivation), "derivation * 100"
    return number_text(gold), "gold number"


def answer_line(question: dict[str, Any]) -> str:
    """The first target line: `answer: ...` for spans and counts, `calculation: ...` for arithmetic."""
    answer_type, answer = question["answer_type"], question["answer"]
    if answer_type == "arithmetic":
        return f"calculation: {arithmetic_target(question)[0]}"
    if answer_type in ("span", "multi-span"):
        spans = [" ".join(str(span).split()) for span in answer] if isinstance(answer, list) else []
        spans = [span for span in spans if span]  # a blank gold span adds nothing to the metric's string
        if not spans:
            raise ValueError(f"a {answer_type} answer must be a list with a non-blank span, got {answer!r}")
        return "answer: " + SPAN_SEPARATOR.join(spans)
    if answer_type == "count":
        return f"answer: {int(answer)}"
    raise ValueError(f"unknown answer_type {answer_type!r}; expected span, multi-span, arithmetic or count")


def render_target(question: dict[str, Any]) -> str:
    """What the model learns to write: the answer line, then the scale line."""
    return f"{answer_line(question)}\nscale: {question['scale'] or NO_SCALE}"


# ---------------------------------------------------------------- reading a model's answer


def _fields(text: str) -> dict[str, tuple[int, str]]:
    """The first `answer:`, `calculation:` and `scale:` line of the text, with its position."""
    found: dict[str, tuple[int, str]] = {}
    for match in _FIELD.finditer(text):
        found.setdefault(match.group(1).lower(), (match.start(), match.group(2).strip()))
    return found


def parse_scale(word: str) -> str:
    """A scale word as the metric spells it ("" for none); plurals and `%` are accepted."""
    key = word.strip().strip(".").lower()
    if key not in SCALE_WORDS:
        raise AnswerError(f"scale: unknown scale {word!r}; expected one of none, thousand, million, billion, percent")
    return SCALE_WORDS[key]


def split_spans(text: str) -> str | list[str]:
    """One span as a string, several (separated by `|`) as a list."""
    spans = [span.strip() for span in text.split("|")]
    spans = [span for span in spans if span]
    return spans if len(spans) > 1 else (spans[0] if spans else "")


def parse_model_answer(text: str) -> tuple[ModelAnswer, str, str | None]:
    """(answer, scale, calculation) from a model's reply. Whichever of `answer:` and `calculation:`
    comes first is the answer; a calculation is computed (the answer is then its float value). A
    missing `scale:` line means no scale. Raises AnswerError when there is nothing to read."""
    fields = _fields(text)
    scale = parse_scale(fields["scale"][1]) if "scale" in fields else ""
    candidates = [(fields[key][0], key) for key in ("answer", "calculation") if key in fields]
    if not candidates:
        raise AnswerError(f"no 'answer:' or 'calculation:' line in the model's reply {text[:80]!r}")
    key = min(candidates)[1]
    if key == "calculation":
        calculation = fields["calculation"][1]
        return evaluate(calculation, scale), scale, calculation
    return split_spans(fields["answer"][1]), scale, None
