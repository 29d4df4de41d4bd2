"""What a query tells the synthesizer: resolved columns, constants, joins, missing columns."""

from __future__ import annotations

import sqlglot

from loratune.sql.analyze import analyze_query, literal_value, storable
from loratune.sql.schema import parse_schema

CONTEXT = ("CREATE TABLE student (stuid VARCHAR, age VARCHAR, sex VARCHAR, fname VARCHAR); "
           "CREATE TABLE has_pet (stuid VARCHAR, petid VARCHAR); CREATE TABLE pets (petid VARCHAR, pettype VARCHAR, weight VARCHAR)")


def facts_of(sql: str, context: str = CONTEXT):
    return analyze_query(sqlglot.parse_one(sql, read="sqlite"), parse_schema(context))


def test_constants_are_tied_to_resolved_columns() -> None:
    facts = facts_of(
        "SELECT count(*) FROM student AS T1 JOIN has_pet AS T2 ON T1.stuid = T2.stuid "
        "JOIN pets AS T3 ON T2.petid = T3.petid WHERE T1.sex = 'F' AND T3.pettype = \"dog\" AND 20 < T1.age"
    )
    assert facts.strings == {("student", "sex"): {"F"}, ("pets", "pettype"): {"dog"}}
    assert facts.numbers == {("student", "age"): {20}}
    assert ("student", "age") in facts.numeric and ("pets", "pettype") in facts.textual
    # `20 < age` is `age > 20`: 21 satisfies it
    assert facts.satisfying[("student", "age")] == {21}
    assert set(map(frozenset, facts.links)) == {frozenset({("student", "stuid"), ("has_pet", "stuid")}),
                                                frozenset({("has_pet", "petid"), ("pets", "petid")})}
    assert facts.missing == []


def test_between_in_like_and_subqueries() -> None:
    facts = facts_of(
        "SELECT fname FROM student WHERE age BETWEEN 18 AND 21 AND sex IN ('F', 'M') AND fname LIKE '%an%' "
        "AND stuid NOT IN (SELECT stuid FROM has_pet) AND stuid = (SELECT max(T.stuid) FROM has_pet AS T)"
    )
    assert facts.numbers[("student", "age")] == {18, 21}
    assert facts.strings[("student", "sex")] == {"F", "M"}
    assert facts.likes[("student", "fname")] == {"%an%"}
    assert (("student", "stuid"), ("has_pet", "stuid")) in facts.links


def test_sum_avg_and_arithmetic_mark_numbers() -> None:
    facts = facts_of("SELECT avg(weight), sum(T1.age) + 1 FROM pets, student AS T1")
    assert {("pets", "weight"), ("student", "age")} <= facts.numeric


def test_set_operations_link_their_outputs() -> None:
    facts = facts_of("SELECT stuid FROM student EXCEPT SELECT petid FROM has_pet")
    assert (("student", "stuid"), ("has_pet", "petid")) in facts.links


def test_columns_missing_from_the_context_are_reported() -> None:
    facts = facts_of(
        "SELECT T1.Name FROM conductor AS T1 JOIN orchestra AS T2 ON T1.Conductor_ID = T2.Conductor_ID WHERE Year_of_Founded > 2008",
        "CREATE TABLE orchestra (Conductor_ID VARCHAR); CREATE TABLE conductor (Name VARCHAR, Conductor_ID VARCHAR)",
    )
    assert facts.missing == [("conductor", "Year_of_Founded")]


def test_projection_aliases_are_not_missing_columns() -> None:
    facts = facts_of("SELECT sex, count(*) AS n FROM student GROUP BY sex ORDER BY n DESC")
    assert facts.missing == []


def test_double_quoted_names_that_name_no_column_are_strings() -> None:
    schema = parse_schema("CREATE TABLE Cartoon (Title VARCHAR, Directed_by VARCHAR)")
    tree = sqlglot.parse_one('SELECT Title FROM Cartoon WHERE Directed_by = "Ben Jones" AND "Title" <> \'x\'', read="sqlite")
    facts = analyze_query(tree, schema)
    assert facts.strings[("cartoon", "directed_by")] == {"Ben Jones"}
    assert facts.strings[("cartoon", "title")] == {"x"}  # "Title" names a column: it stays one
    assert literal_value(sqlglot.parse_one("SELECT -2.5").selects[0]) == -2.5


def test_constants_per_column_are_capped() -> None:
    facts = facts_of("SELECT fname FROM student WHERE age IN (" + ", ".join(str(i) for i in range(500)) + ")")
    assert len(facts.numbers[("student", "age")]) == 24


def test_literals_read_as_sqlite_reads_them_and_only_storable_ones_are_planted() -> None:
    def value(sql: str):
        return literal_value(sqlglot.parse_one(f"SELECT {sql}", read="sqlite").selects[0])

    # past 64 bits SQLite reads an integer literal as a REAL; 1e999 is infinite
    assert value("123456789012345678901234567890") == 1.2345678901234568e29
    assert isinstance(value("123456789012345678901234567890"), float) and value("-9223372036854775808") == -(2.0**63)
    assert value("9007199254740993") == 9007199254740992 and isinstance(value("9007199254740993"), int)
    assert value("1e999") == float("inf") and value("-1e999") == float("-inf")
    assert [storable(v) for v in (1, 1e308, float("inf"), float("nan"), "é", "a\u0000b", "\ud800")] == [
        True, True, False, False, True, True, False]
    facts = facts_of("SELECT fname FROM student WHERE age > 1e999 AND sex = '\ud800' AND stuid = 123456789012345678901234567890"
                     " GROUP BY fname HAVING count(*) > 1e999")
    assert facts.numbers == {("student", "stuid"): {1.2345678901234568e29}} and facts.strings == {}
    assert facts.group_sizes == {} and facts.loose_numbers == {1.2345678901234568e29}
