"""Decide whether a predicted query may run at all: one SELECT (or WITH ... SELECT) statement.

Predictions are untrusted text from a model. Before anything executes, the text is cleaned of
one trailing semicolon, bounded in length (so a syntax bomb cannot make the parser itself the
denial of service), parsed with sqlglot in the SQLite dialect, and accepted only when it is a
single read-only query. Execution adds its own guards (see `execute.py`); this is the first
of two locks, not the only one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

MAX_SQL_CHARS = 20_000
"""Longer text is refused unparsed: no Spider query comes near it, and it bounds parse time."""

MAX_NODES = 3_000
"""A parsed query bigger than this is refused: Spider's largest gold has a few hundred nodes,
and the cap bounds the work of normalising and analysing what a model wrote."""

MAX_DEPTH = 200
"""A parsed query deeper than this is refused: the guarded connection refuses expressions
deeper than 200 anyway (`execute.py`), and the cap keeps the recursive walks of normalising
and analysing far from Python's recursion limit."""

_QUERY_TYPES = (exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Subquery)
_FORBIDDEN = (exp.Insert, exp.Update, exp.Delete, exp.Create, exp.Drop, exp.Alter, exp.Command, exp.Pragma)


@dataclass(frozen=True)
class ParsedQuery:
    text: str
    """The SQL that runs: the input less surrounding space and one trailing semicolon."""
    tree: exp.Expression


@dataclass(frozen=True)
class Rejected:
    text: str
    reason: str


def clean_sql(text: str) -> str:
    """Strip whitespace and a single trailing semicolon, as models often end a query with one."""
    text = text.strip()
    if text.endswith(";"):
        text = text[:-1].rstrip()
    return text


def parse_query(text: str) -> ParsedQuery | Rejected:
    """Parse `text` as one read-only SQLite query, or say why it may not run."""
    sql = clean_sql(text)
    if not sql:
        return Rejected(sql, "empty query")
    if len(sql) > MAX_SQL_CHARS:
        return Rejected(sql[:200], f"query longer than {MAX_SQL_CHARS} characters")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as err:  # JSON can carry a lone surrogate; SQLite cannot take it
        return Rejected(sql, f"query is not valid Unicode text (a lone surrogate at character {err.start})")
    try:
        with quiet_sqlglot():
            statements = [s for s in sqlglot.parse(sql, read="sqlite") if s is not None]
    except RecursionError:
        return Rejected(sql, "query nested too deeply to parse")
    except SqlglotError as err:
        return Rejected(sql, f"does not parse: {_first_line(err)}")
    except Exception as err:  # noqa: BLE001 - a parser bug on odd input is still a failure to parse, not a crash
        return Rejected(sql, f"does not parse: {type(err).__name__}: {_first_line(err)}")
    if len(statements) != 1:
        return Rejected(sql, f"expected one statement, found {len(statements)}")
    tree = statements[0]
    if not isinstance(tree, _QUERY_TYPES):
        return Rejected(sql, f"only SELECT/WITH queries may run, not {type(tree).__name__.upper()}")
    size = 0
    stack = [(tree, 1)]  # depth-first by hand: the depth is what is being bounded, so no recursion
    while stack:
        node, depth = stack.pop()
        size += 1
        if size > MAX_NODES:
            return Rejected(sql, f"query has more than {MAX_NODES} syntax nodes")
        if depth > MAX_DEPTH:
            return Rejected(sql, f"query nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, _FORBIDDEN):
            return Rejected(sql, "query contains a statement that writes or changes the database")
        stack.extend((child, depth + 1) for child in node.iter_expressions())
    return ParsedQuery(sql, tree)


@contextmanager
def quiet_sqlglot() -> Iterator[None]:
    """sqlglot logs a warning for each statement it falls back to parsing as a Command; for
    untrusted text that is noise (the statement is rejected anyway)."""
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
