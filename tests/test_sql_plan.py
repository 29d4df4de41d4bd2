"""Planning synthesized databases: column kinds, shared-value domains, key columns."""

from __future__ import annotations

import sqlglot

from loratune.sql.analyze import analyze_query
from loratune.sql.plan import plan_database
from loratune.sql.schema import parse_schema

CONTEXT = ("CREATE TABLE stadium (stadium_id VARCHAR, name VARCHAR, capacity VARCHAR, opened INTEGER, notes VARCHAR); "
           "CREATE TABLE concert (concert_id VARCHAR, stadium_id VARCHAR, year VARCHAR, theme VARCHAR)")


def plan_for(gold: str, *others: str, context: str = CONTEXT):
    schema = parse_schema(context)
    facts = [analyze_query(sqlglot.parse_one(q, read="sqlite"), schema) for q in (gold, *others)]
    return plan_database(schema, facts[0], facts[1:])


def affinity(plan, table: str, column: str) -> str:
    return plan.domains[plan.domain_of[(table, column)]].affinity


def test_kinds_come_from_gold_usage_then_declared_type_then_name_then_prediction() -> None:
    plan = plan_for(
        "SELECT name FROM stadium WHERE notes > 3 AND opened = 'soon' AND name LIKE '%a%'",
        "SELECT name FROM stadium WHERE theme = 'x' AND name > 4",
    )
    assert affinity(plan, "stadium", "notes") == "int"  # the gold compares it with a number
    assert affinity(plan, "stadium", "opened") == "text"  # declared INTEGER, but the gold compares it with a string
    assert affinity(plan, "stadium", "capacity") == "int"  # declared VARCHAR, named like a number
    assert affinity(plan, "concert", "year") == "int"
    assert affinity(plan, "stadium", "name") == "text"  # the prediction's `name > 4` does not override the gold
    assert affinity(plan, "concert", "theme") == "text"
    plan = plan_for("SELECT name FROM stadium", "SELECT name FROM stadium WHERE notes >= 2.5")
    assert affinity(plan, "stadium", "notes") == "real"  # only the prediction says anything about it
    ddl = " ".join(plan.ddl())
    assert '"notes" REAL' in ddl and '"capacity" INTEGER' in ddl and '"name" TEXT' in ddl


def test_gold_joins_make_domains_with_a_primary_key() -> None:
    plan = plan_for("SELECT T2.name FROM concert AS T1 JOIN stadium AS T2 ON T1.stadium_id = T2.stadium_id")
    domain = plan.domains[plan.domain_of[("stadium", "stadium_id")]]
    assert plan.domain_of[("concert", "stadium_id")] == plan.domain_of[("stadium", "stadium_id")]
    assert domain.primary == ("stadium", "stadium_id")
    assert plan.domains[plan.domain_of[("concert", "concert_id")]].primary == ("concert", "concert_id")


def test_prediction_joins_do_not_make_columns_share_values() -> None:
    gold = "SELECT T2.name FROM concert AS T1 JOIN stadium AS T2 ON T1.stadium_id = T2.stadium_id"
    plan = plan_for(gold, gold.replace("T1.stadium_id =", "T1.concert_id ="))
    assert plan.domain_of[("concert", "concert_id")] != plan.domain_of[("stadium", "stadium_id")]


def test_constants_of_every_query_reach_the_domain_but_witnesses_only_from_the_gold() -> None:
    plan = plan_for("SELECT name FROM stadium WHERE capacity > 5000", "SELECT name FROM stadium WHERE capacity < 100")
    domain = plan.domains[plan.domain_of[("stadium", "capacity")]]
    assert domain.numbers == {5000, 100}
    assert plan.facts.satisfying[("stadium", "capacity")] == {5001}


def test_numeric_strings_count_as_numbers() -> None:
    plan = plan_for("SELECT name FROM concert AS c JOIN stadium AS s ON c.stadium_id = s.stadium_id WHERE c.year = '2014'")
    assert affinity(plan, "concert", "year") == "int"
    assert plan.domains[plan.domain_of[("concert", "year")]].numbers == {2014}


def test_numbers_no_row_can_hold_are_not_planned() -> None:
    plan = plan_for("SELECT name FROM stadium WHERE capacity > 5000 AND notes = 'nan' AND name = '1e999'",
                    "SELECT name FROM stadium WHERE capacity = '123456789012345678901234567890' AND notes = 'inf'")
    numbers = {n for d in plan.domains for n in d.numbers}
    assert numbers == {5000, 1.2345678901234568e29}
    assert [d.affinity for d in plan.domains if d.name in ("notes", "name")] == ["text", "text"]
