"""Only one read-only query may run; the parser itself is bounded."""

from __future__ import annotations

import time

import pytest

from loratune.sql.safety import (
    MAX_DEPTH,
    MAX_SQL_CHARS,
    ParsedQuery,
    Rejected,
    clean_sql,
    parse_query,
)


def test_strips_one_trailing_semicolon() -> None:
    assert clean_sql("  SELECT 1 ;  ") == "SELECT 1"
    assert clean_sql("SELECT 1;;") == "SELECT 1;"
    parsed = parse_query('SELECT name FROM singer WHERE country = "France";')
    assert isinstance(parsed, ParsedQuery) and parsed.text == 'SELECT name FROM singer WHERE country = "France"'


@pytest.mark.parametrize("sql", ["SELECT a FROM t", "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
                                 "SELECT a FROM t INTERSECT SELECT a FROM u", "(SELECT a FROM t)"])
def test_accepts_queries(sql: str) -> None:
    assert isinstance(parse_query(sql), ParsedQuery)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("", "empty"),
        ("SELECT 1; DROP TABLE t", "one statement"),
        ("DROP TABLE t", "only SELECT"),
        ("INSERT INTO t VALUES (1)", "only SELECT"),
        ("ATTACH DATABASE 'x.db' AS x", "only SELECT"),
        ("PRAGMA table_info(t)", "only SELECT"),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "writes"),
        ("SELECT FROM WHERE", "does not parse"),
        ("SELECT a FROM t; and then some words", "does not parse"),
    ],
)
def test_rejects_with_reason(sql: str, reason: str) -> None:
    result = parse_query(sql)
    assert isinstance(result, Rejected) and reason in result.reason


def test_syntax_bombs_are_refused_quickly() -> None:
    bombs = ["SELECT " + "(" * 5000 + "1" + ")" * 5000, "SELECT 1" + " + 1" * 6000,
             "SELECT " + ", ".join(["a"] * 1600) + " FROM t"]
    for bomb in bombs:
        started = time.perf_counter()
        result = parse_query(bomb)
        assert isinstance(result, Rejected)
        assert time.perf_counter() - started < 1.0
    assert "longer than" in parse_query("SELECT '" + "x" * MAX_SQL_CHARS + "'").reason


def test_deep_trees_odd_text_and_parser_failures_are_refused_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    chain = "SELECT a FROM t WHERE " + " OR ".join(f"a = {i}" for i in range(MAX_DEPTH + 10))
    assert parse_query(chain).reason == f"query nested more than {MAX_DEPTH} levels deep"
    assert isinstance(parse_query("SELECT a FROM t WHERE " + " OR ".join(f"a = {i}" for i in range(50))), ParsedQuery)
    assert "lone surrogate at character 8" in parse_query("SELECT '\ud800'").reason

    def broken(*_args, **_kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr("loratune.sql.safety.sqlglot.parse", broken)
    assert parse_query("SELECT 1").reason == "does not parse: IndexError: list index out of range"
