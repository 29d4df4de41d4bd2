"""Guarded execution: reads only, deadlines, row caps, read-only copies of real databases."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from loratune.errors import SqlError
from loratune.sql.execute import memory_database, read_only_copy, run_query


@pytest.fixture()
def conn() -> sqlite3.Connection:
    return memory_database(["CREATE TABLE t (a INTEGER, b TEXT)"], {"t": (["a", "b"], [(i, f"x{i}") for i in range(20)])})


def test_runs_a_query(conn: sqlite3.Connection) -> None:
    result = run_query(conn, "SELECT count(*), max(a) FROM t WHERE b LIKE 'x1%'", timeout_s=1)
    assert result.ok and result.rows == [(11, 19)]


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1, 'y')",
        "DELETE FROM t",
        "CREATE TABLE u (a)",
        "ATTACH DATABASE ':memory:' AS other",
        "PRAGMA writable_schema = 1",
        "SELECT * FROM pragma_table_info('t')",
        "SELECT load_extension('/tmp/x.so')",
        "SELECT printf('%.*c', 1000000000, 'x')",
    ],
)
def test_authorizer_refuses_everything_but_reads(conn: sqlite3.Connection, sql: str) -> None:
    started = time.perf_counter()
    result = run_query(conn, sql, timeout_s=1)
    assert not result.ok and result.error
    assert time.perf_counter() - started < 0.5
    assert run_query(conn, "SELECT count(*) FROM t", timeout_s=1).rows == [(20,)]


def test_deadline_stops_an_endless_recursive_cte(conn: sqlite3.Connection) -> None:
    started = time.perf_counter()
    result = run_query(conn, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", timeout_s=0.3)
    elapsed = time.perf_counter() - started
    assert result.timed_out and result.runaway and "time limit" in result.error
    assert 0.25 < elapsed < 1.5  # 5x the limit: a loaded runner is slow, and this checks the stop, not speed


def test_deadline_stops_a_huge_cross_join(conn: sqlite3.Connection) -> None:
    started = time.perf_counter()
    result = run_query(conn, "SELECT count(*) FROM " + ", ".join(f"t AS t{i}" for i in range(10)), timeout_s=0.3)
    assert result.timed_out and time.perf_counter() - started < 1.5


def test_row_cap(conn: sqlite3.Connection) -> None:
    result = run_query(conn, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c", timeout_s=2, max_rows=1000)
    assert result.runaway and not result.timed_out and "more than 1000 rows" in result.error


def test_blob_and_string_bombs_hit_the_length_limit(conn: sqlite3.Connection) -> None:
    for sql in ("SELECT zeroblob(1000000000)", "SELECT randomblob(1000000000)",
                "WITH RECURSIVE c(x) AS (SELECT 'x' UNION ALL SELECT x || x FROM c) SELECT max(length(x)) FROM c"):
        result = run_query(conn, sql, timeout_s=1)
        assert not result.ok and "too big" in result.error


def test_read_only_copy_leaves_the_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "real.sqlite"
    source = sqlite3.connect(path)
    source.execute("CREATE TABLE singer (name TEXT, age INTEGER)")
    source.executemany("INSERT INTO singer VALUES (?, ?)", [("Ann", 30), ("Bo", 41)])
    source.commit()
    source.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    os.chmod(path, stat.S_IRUSR)  # works on a read-only file, as in CI's copy of shared/
    os.chmod(tmp_path, stat.S_IRUSR | stat.S_IXUSR)
    try:
        copy = read_only_copy(path)
        assert run_query(copy, "SELECT name FROM singer WHERE age > 35", timeout_s=1).rows == [("Bo",)]
        assert not run_query(copy, "DELETE FROM singer", timeout_s=1).ok
        copy.close()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["real.sqlite"]  # no journal written
    finally:
        os.chmod(tmp_path, stat.S_IRWXU)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_result_size_cap_on_wide_rows(conn: sqlite3.Connection) -> None:
    sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) SELECT zeroblob(90000), zeroblob(90000) FROM n"
    result = run_query(conn, sql, timeout_s=2)
    assert result.runaway and "bytes" in result.error


@pytest.mark.parametrize("value", [2**70, -(2**63) - 1, "\ud800"])
def test_a_value_sqlite_cannot_store_is_an_sql_error_naming_the_table(value: object) -> None:
    with pytest.raises(SqlError, match=r"rows of table 't'"):
        memory_database(["CREATE TABLE t (a)"], {"t": (["a"], [(1,), (value,)])})
    with pytest.raises(SqlError, match="schema"):
        memory_database(["CREATE TABLE t (a", "SELECT 1"])
