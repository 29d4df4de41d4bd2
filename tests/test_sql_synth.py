"""Synthesized databases: deterministic, and full of the rows that tell queries apart."""

from __future__ import annotations

import random
import sqlite3

import sqlglot

from loratune.sql.analyze import analyze_query
from loratune.sql.plan import plan_database
from loratune.sql.schema import parse_schema
from loratune.sql.synth import WITNESS_ROWS, fill_database, synthesize_databases

CONTEXT = ("CREATE TABLE stadium (stadium_id VARCHAR, name VARCHAR, capacity VARCHAR); "
           "CREATE TABLE concert (concert_id VARCHAR, stadium_id VARCHAR, year VARCHAR, theme VARCHAR)")
GOLD = ("SELECT T2.name, count(*) FROM concert AS T1 JOIN stadium AS T2 ON T1.stadium_id = T2.stadium_id "
        "WHERE T1.year > 2013 AND T1.theme LIKE '%Fest%' GROUP BY T2.stadium_id")


def plan_for(gold: str = GOLD, *others: str, context: str = CONTEXT):
    schema = parse_schema(context)
    facts = [analyze_query(sqlglot.parse_one(q, read="sqlite"), schema) for q in (gold, *others)]
    return plan_database(schema, facts[0], facts[1:])


def rows(conn: sqlite3.Connection, table: str) -> list[tuple]:
    return conn.execute(f'SELECT * FROM "{table}"').fetchall()


def test_same_seed_same_databases_other_seed_others() -> None:
    plan = plan_for()
    first = [rows(c, "concert") + rows(c, "stadium") for c in synthesize_databases(plan, num_dbs=4, seed="s")]
    again = [rows(c, "concert") + rows(c, "stadium") for c in synthesize_databases(plan, num_dbs=4, seed="s")]
    other = [rows(c, "concert") + rows(c, "stadium") for c in synthesize_databases(plan, num_dbs=4, seed="t")]
    assert first == again
    assert first != other
    assert len({str(r) for r in first}) == 4  # the databases differ from each other


def test_types_follow_usage_not_the_declared_varchar() -> None:
    plan = plan_for()
    ddl = " ".join(plan.ddl())
    assert '"year" INTEGER' in ddl and '"stadium_id" INTEGER' in ddl and '"theme" TEXT' in ddl
    conn = synthesize_databases(plan, num_dbs=1, seed="x")[0]
    # compared as numbers, as on the real database: '100' > 56 would be true for text
    assert conn.execute("SELECT count(*) FROM concert WHERE typeof(year) NOT IN ('integer', 'null')").fetchone() == (0,)


def test_constants_neighbours_and_like_matches_appear() -> None:
    plan = plan_for(GOLD, GOLD.replace("> 2013", ">= 2015"))
    years = set()
    for conn in synthesize_databases(plan, num_dbs=8, seed="c"):
        years |= {r[0] for r in conn.execute("SELECT year FROM concert")}
        assert conn.execute("SELECT count(*) FROM concert WHERE theme LIKE '%Fest%'").fetchone()[0] >= 1
    assert {2012, 2013, 2014, 2015, 2016} <= years  # both queries' constants and their neighbours


def test_witness_rows_join_and_satisfy_the_gold() -> None:
    for conn in synthesize_databases(plan_for(), num_dbs=8, seed="w"):
        assert conn.execute(GOLD).fetchall(), "the gold must find rows in every database"


def test_key_columns_are_unique_and_foreign_keys_repeat() -> None:
    plan = plan_for()
    assert plan.domains[plan.domain_of[("stadium", "stadium_id")]].primary == ("stadium", "stadium_id")
    for index, conn in enumerate(synthesize_databases(plan, num_dbs=8, seed="k")):
        keys = [r[0] for r in conn.execute("SELECT stadium_id FROM stadium")]
        assert len(keys) == len(set(keys))
        refs = [r[0] for r in conn.execute("SELECT stadium_id FROM concert")]
        if index > 0:  # the clean database 0 is small
            assert len(refs) > len(set(refs))  # more concerts than stadiums: some stadium has several
        assert conn.execute("SELECT count(*) FROM concert JOIN stadium USING (stadium_id)").fetchone()[0] >= WITNESS_ROWS


def test_nulls_and_duplicates_except_in_the_clean_database() -> None:
    plan = plan_for("SELECT name FROM singer WHERE country = 'France'", context="CREATE TABLE singer (name VARCHAR, country VARCHAR)")
    dbs = synthesize_databases(plan, num_dbs=8, seed="n")
    clean = rows(dbs[0], "singer")
    assert all(None not in r for r in clean)
    others = [r for conn in dbs[1:] for r in rows(conn, "singer")]
    assert any(None in r for r in others)
    assert any(len(rows(c, "singer")) > len(set(rows(c, "singer"))) for c in dbs[1:])
    countries = {r[1] for r in others}
    assert {"France", "FRANCE"} <= countries or {"France", "france"} <= countries


def test_fill_is_a_pure_function_of_the_generator() -> None:
    plan = plan_for()
    assert fill_database(plan, random.Random(5), clean=False) == fill_database(plan, random.Random(5), clean=False)


def test_huge_constants_leave_every_value_storable() -> None:
    """A prediction comparing with 1e300 or a 30-digit integer once made the synthesizer draw
    integers SQLite cannot hold (OverflowError) or NaN ranges (ValueError)."""
    context = "CREATE TABLE singer (name VARCHAR, age INTEGER, rate REAL)"
    plan = plan_for("SELECT name FROM singer WHERE age > 20 AND rate < 2.5",
                    "SELECT name FROM singer WHERE age > 123456789012345678901234567890 OR age < -1e300 OR rate = 1e308",
                    "SELECT name FROM singer WHERE age = 9223372036854775807 OR age = -9223372036854775808",
                    context=context)
    for conn in synthesize_databases(plan, num_dbs=8, seed="huge"):
        values = [v for r in rows(conn, "singer") for v in r[1:] if v is not None]
        assert all(abs(v) < 2**63 for v in values if isinstance(v, int))
        assert 1.2345678901234568e29 in values or 1e308 in values or -1e300 in values  # constants still planted
