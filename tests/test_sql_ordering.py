"""Top-level ORDER BY detection and the gold's tie query."""

from __future__ import annotations

import sqlite3

import sqlglot

from loratune.sql.ordering import has_top_level_order, tie_query


def parse(sql: str):
    return sqlglot.parse_one(sql, read="sqlite")


def test_only_the_outermost_order_counts() -> None:
    assert has_top_level_order(parse("SELECT a FROM t ORDER BY a"))
    assert not has_top_level_order(parse("SELECT a FROM t WHERE a = (SELECT a FROM t ORDER BY b LIMIT 1)"))
    assert has_top_level_order(parse("SELECT a FROM t UNION SELECT b FROM u ORDER BY 1"))


def test_tie_query_appends_sort_keys_and_drops_limit() -> None:
    query = tie_query(parse("SELECT name, count(*) AS n FROM t GROUP BY name ORDER BY n DESC, 1 LIMIT 2"))
    assert query is not None and query.width == 2 and query.limit == 2
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (name TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [("a",), ("b",), ("b",), ("c",), ("c",)])
    assert conn.execute(query.sql).fetchall() == [("b", 2, 2, "b"), ("c", 2, 2, "c"), ("a", 1, 1, "a")]


def test_no_tie_query_where_it_would_change_the_answer() -> None:
    assert tie_query(parse("SELECT a FROM t")) is None
    assert tie_query(parse("SELECT DISTINCT a FROM t ORDER BY b")) is None
    assert tie_query(parse("SELECT DISTINCT a FROM t ORDER BY a")) is not None
    assert tie_query(parse("SELECT a FROM t ORDER BY a LIMIT 1 OFFSET 2")) is None
    assert tie_query(parse("SELECT * FROM t ORDER BY a")) is None
