"""Normalised exact match: spelling differences vanish, meaning differences stay."""

from __future__ import annotations

import pytest
import sqlglot

from loratune.sql.normalize import normalized_sql
from loratune.sql.safety import clean_sql
from loratune.sql.schema import parse_schema

SCHEMA = parse_schema(
    "CREATE TABLE singer (singer_id VARCHAR, name VARCHAR, country VARCHAR, age INTEGER); "
    "CREATE TABLE concert (concert_id VARCHAR, singer_id VARCHAR, year VARCHAR)"
)


def norm(sql: str) -> str:
    return normalized_sql(sqlglot.parse_one(clean_sql(sql), read="sqlite"), SCHEMA)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SELECT name FROM singer WHERE age > 20", "select  NAME\n from SINGER where AGE>20;"),
        ('SELECT name FROM singer WHERE country = "France"', "SELECT name FROM singer WHERE country = 'France'"),
        ("SELECT name FROM singer WHERE country = 'France'", "SELECT name FROM singer WHERE 'France' = country"),
        ("SELECT name FROM singer WHERE age > 20", "SELECT name FROM singer WHERE 20 < age"),
        ("SELECT name FROM singer WHERE age > 20 AND country = 'x'", "SELECT (name) FROM singer WHERE ((age > 20) AND (country = 'x'))"),
        ("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer ORDER BY age ASC"),
        ('SELECT "name" FROM "singer"', "SELECT name FROM singer"),
        ("SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id",
         "SELECT s.name FROM singer s JOIN concert c ON s.singer_id = c.singer_id"),
        ("SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id",
         "SELECT singer.name FROM singer JOIN concert ON singer.singer_id = concert.singer_id"),
        ("SELECT T1.name FROM singer AS T1 WHERE T1.age > 3", "SELECT name FROM singer WHERE age > 3"),
        ("SELECT count(*) FROM singer WHERE age <> 3", "SELECT COUNT(*) FROM singer WHERE age != 3"),
    ],
)
def test_equivalent_spellings_normalise_alike(a: str, b: str) -> None:
    assert norm(a) == norm(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SELECT name FROM singer WHERE (age > 1 OR age < 0) AND country = 'x'",
         "SELECT name FROM singer WHERE age > 1 OR age < 0 AND country = 'x'"),
        ("SELECT name FROM singer WHERE country = 'France'", "SELECT name FROM singer WHERE country = 'france'"),
        ("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer ORDER BY age DESC"),
        ("SELECT name FROM singer WHERE age > 20", "SELECT name FROM singer WHERE age >= 20"),
        ("SELECT T1.name FROM singer AS T1 JOIN singer AS T2 ON T1.age = T2.age",
         "SELECT T2.name FROM singer AS T1 JOIN singer AS T2 ON T1.age = T2.age"),
    ],
)
def test_different_queries_stay_different(a: str, b: str) -> None:
    assert norm(a) != norm(b)


def test_output_is_plain_sql() -> None:
    assert norm('select T1.name from singer as T1 where T1.country = "France" order by T1.age asc;') == \
        "SELECT name FROM singer WHERE country = 'France' ORDER BY age"
