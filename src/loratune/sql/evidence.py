"""What a judged prediction returned, kept small enough to show beside its verdict.

The judge compares results on many databases; a reader wants one of them: the row's real
database when there is one, else the synthesized database that decided a mismatch, else the
first where the gold returned rows. Only the first `SHOWN_ROWS` rows of each side are kept, as
JSON values (tuples become lists, blobs hex text, long strings cut), so a predictions file holds
thousands of rows without holding their results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from loratune.sql.execute import QueryResult

SHOWN_ROWS = 5
"""Rows kept per side: enough to see what a query returned, small enough for every eval row."""
MAX_CELL_CHARS = 200
"""Text and blob cells are cut to this many characters."""
MAX_ERROR_CHARS = 500
"""Errors are cut to this length: a message may quote a query of thousands of characters."""
REAL = "real"
SCHEMA = "schema"
"""The empty database built from the row's context: a prediction runs there first, to check it."""


@dataclass
class Evidence:
    """One database's run of the prediction beside the gold's."""

    database: str | None
    """"real", "synthesized N", "schema", or None when the prediction never ran."""
    ran: bool
    error: str | None = None
    rows: list[list[Any]] = field(default_factory=list)
    row_count: int = 0
    gold_rows: list[list[Any]] = field(default_factory=list)
    gold_row_count: int | None = None
    """None when the gold was not run on this database."""
    match: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"ran": self.ran, "error": self.error, "rows": self.rows, "row_count": self.row_count,
                "gold_rows": self.gold_rows, "gold_row_count": self.gold_row_count, "match": self.match,
                "database": self.database}


def not_run(error: str | None) -> Evidence:
    """A prediction that was refused before reaching any database (it does not parse, or writes)."""
    return Evidence(None, False, error=_shorten(error, MAX_ERROR_CHARS))


def query_evidence(database: str, pred: QueryResult, gold: QueryResult | None, match: bool) -> Evidence:
    """Both sides' first rows and counts on one database; `gold` is None where only the prediction ran."""
    gold_rows = gold.rows if gold is not None and gold.rows is not None else None
    return Evidence(
        database,
        pred.ok,
        error=_shorten(pred.error, MAX_ERROR_CHARS),
        rows=json_rows(pred.rows or []),
        row_count=len(pred.rows or []),
        gold_rows=json_rows(gold_rows or []),
        gold_row_count=None if gold_rows is None else len(gold_rows),
        match=match,
    )


def preferred(new: Evidence, old: Evidence | None) -> bool:
    """Whether `new` is the better one to show: the real database over all others, any data
    over the empty schema, a mismatch over a match, rows from the gold over none."""
    if old is None or old.database in (None, SCHEMA) or new.database == REAL:
        return True
    if old.database == REAL:
        return False
    return not new.match or not old.gold_row_count


def json_rows(rows: list[tuple]) -> list[list[Any]]:
    """The first `SHOWN_ROWS` rows as JSON-safe lists."""
    return [[json_cell(value) for value in row] for row in rows[:SHOWN_ROWS]]


def json_cell(value: Any) -> Any:
    """A result cell as a JSON value: numbers and None as they are (non-finite floats and
    Decimals as text or float), blobs as SQLite's X'..' hex, long text cut."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return json_cell(float(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _shorten(f"X'{bytes(value[:MAX_CELL_CHARS]).hex().upper()}'", MAX_CELL_CHARS)
    if isinstance(value, (tuple, list)):
        return [json_cell(v) for v in value]
    return _shorten(str(value), MAX_CELL_CHARS)


def _shorten(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."
