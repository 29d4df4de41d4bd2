"""Run untrusted queries against SQLite with a fence around them.

Every connection queries are run on is in memory (a synthesized database, or a copy of a real
one read through a `mode=ro` URI), so nothing on disk can change. On top of that:
- an authorizer allows only reads, SELECT, function calls and recursive CTEs: ATTACH, PRAGMA,
  writes, schema changes, `load_extension` and `printf` are refused at prepare time;
- SQLite limits bound string length, expression depth, LIKE patterns and compound SELECTs;
- a progress handler aborts a statement past its deadline (a recursive CTE that never ends, a
  cross join of a billion rows), and results are fetched in chunks up to a row cap.
A query stopped by any of these comes back as an error, never as an exception.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from loratune.errors import SqlError
from loratune.sql.schema import quote_identifier

MAX_ROWS = 10_000
"""Results longer than this are refused: no gold result on these databases comes near it."""
MAX_RESULT_BYTES = 20_000_000
"""Nor may the text and blobs of a result add up to more than this (wide rows of long strings)."""

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
# printf/format can spend seconds inside one call (`printf('%.*c', 1e9, 'x')`), where neither
# the progress handler nor an interrupt can stop it; text-to-SQL has no use for them
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "printf", "format"}
_LIMITS = {
    "SQLITE_LIMIT_LENGTH": 100_000,  # also bounds the work of one LIKE or replace() call
    "SQLITE_LIMIT_SQL_LENGTH": 100_000,
    "SQLITE_LIMIT_EXPR_DEPTH": 200,
    "SQLITE_LIMIT_COMPOUND_SELECT": 50,
    "SQLITE_LIMIT_LIKE_PATTERN_LENGTH": 100,
    "SQLITE_LIMIT_ATTACHED": 0,
    "SQLITE_LIMIT_FUNCTION_ARG": 32,
    "SQLITE_LIMIT_COLUMN": 500,
}


@dataclass(frozen=True)
class QueryResult:
    rows: list[tuple] | None
    """The rows, or None when the query failed or was stopped."""
    error: str | None = None
    timed_out: bool = False
    """True when the deadline stopped it: the caller need not try the same query again."""
    runaway: bool = False
    """True when a limit stopped it (time or rows): the query is reported invalid."""

    @property
    def ok(self) -> bool:
        return self.rows is not None


def _authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action not in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def guard_connection(conn: sqlite3.Connection) -> sqlite3.Connection:
    """Lock a connection down for untrusted queries. Call after the database has been filled:
    from here on the connection can only read."""
    if hasattr(conn, "setlimit"):  # Python >= 3.11; the authorizer and deadline still apply without
        for name, value in _LIMITS.items():
            if hasattr(sqlite3, name):
                conn.setlimit(getattr(sqlite3, name), value)
    conn.set_authorizer(_authorize)
    return conn


def memory_database(
    statements: list[str], rows: dict[str, tuple[list[str], list[tuple]]] | None = None
) -> sqlite3.Connection:
    """Build an in-memory database from DDL statements and rows (table -> (columns, rows)),
    then guard it. Raises SqlError naming the table when a statement or a value is refused
    (a value SQLite cannot store, such as an integer past 64 bits): the judge makes that the
    row's verdict."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    table = ""
    try:
        for statement in statements:
            conn.execute(statement)
        for table, (columns, values) in (rows or {}).items():
            if values:
                cols = ", ".join(quote_identifier(c) for c in columns)
                marks = ", ".join("?" for _ in columns)
                conn.executemany(f"INSERT INTO {quote_identifier(table)} ({cols}) VALUES ({marks})", values)
        conn.commit()
    except (sqlite3.Error, OverflowError, ValueError, MemoryError) as err:
        conn.close()
        where = f"rows of table {table!r}" if table else "schema"
        raise SqlError(f"cannot build the database ({where}): {type(err).__name__}: {err}") from err
    return guard_connection(conn)


def read_only_copy(path: str | Path) -> sqlite3.Connection:
    """Copy a database file into memory through a read-only URI, so queries never touch the file
    (and a database on a read-only disk works, since no journal or lock file is written)."""
    uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro&immutable=1"
    source = sqlite3.connect(uri, uri=True)
    try:
        copy = sqlite3.connect(":memory:", check_same_thread=False)
        source.backup(copy)
    finally:
        source.close()
    return guard_connection(copy)


def run_query(conn: sqlite3.Connection, sql: str, *, timeout_s: float, max_rows: int = MAX_ROWS) -> QueryResult:
    """Run one query under a deadline of `timeout_s` seconds (covering both preparing and
    fetching) and a cap of `max_rows` rows."""
    deadline = time.monotonic() + timeout_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        cursor = conn.execute(sql)
        rows: list[tuple] = []
        size = 0
        while True:
            chunk = cursor.fetchmany(500)
            if not chunk:
                break
            rows.extend(chunk)
            size += sum(len(v) for row in chunk for v in row if isinstance(v, (str, bytes)))
            if len(rows) > max_rows or size > MAX_RESULT_BYTES:
                cursor.close()
                limit = f"more than {max_rows} rows" if len(rows) > max_rows else f"more than {MAX_RESULT_BYTES} bytes"
                return QueryResult(None, f"result has {limit}", runaway=True)
        return QueryResult(rows)
    except (sqlite3.Error, OverflowError, MemoryError, RecursionError, ValueError) as err:
        if time.monotonic() > deadline:
            return QueryResult(None, f"stopped after the {timeout_s:g}s time limit", timed_out=True, runaway=True)
        return QueryResult(None, f"{type(err).__name__}: {err}")
    finally:
        conn.set_progress_handler(None, 0)
