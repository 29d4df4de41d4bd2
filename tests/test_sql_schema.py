"""CREATE TABLE contexts into a schema: case-insensitive merging, DDL that SQLite accepts."""

from __future__ import annotations

import sqlite3

from loratune.sql.schema import parse_schema


def test_parses_tables_columns_and_types() -> None:
    schema = parse_schema("CREATE TABLE head (age INTEGER); CREATE TABLE department (name VARCHAR, budget REAL)")
    assert [t.name for t in schema.tables] == ["head", "department"]
    assert [(c.name, c.declared_type) for c in schema.table("HEAD").columns] == [("age", "INTEGER")]
    assert [c.name for c in schema.table("department").columns] == ["name", "budget"]
    assert schema.has_column("BUDGET") and not schema.has_column("salary")


def test_merges_repeated_tables_and_columns_case_insensitively() -> None:
    # both occur in sql-create-context and SQLite would reject them as written
    schema = parse_schema("CREATE TABLE Cartoon (Title VARCHAR, title VARCHAR); CREATE TABLE cartoon (Channel VARCHAR)")
    assert len(schema.tables) == 1
    assert [c.name for c in schema.tables[0].columns] == ["Title", "Channel"]
    conn = sqlite3.connect(":memory:")
    for statement in schema.ddl():
        conn.execute(statement)
    assert conn.execute('SELECT title, channel FROM cartoon').fetchall() == []


def test_ddl_overrides_types_and_quotes_names() -> None:
    schema = parse_schema('CREATE TABLE "TV Channel" (age VARCHAR, "select" VARCHAR)')
    ddl = schema.ddl({("tv channel", "age"): "INTEGER"})
    assert ddl == ['CREATE TABLE "TV Channel" ("age" INTEGER, "select" TEXT)']
    conn = sqlite3.connect(":memory:")
    conn.execute(ddl[0])
    conn.execute('INSERT INTO "TV Channel" VALUES (\'56\', 1)')
    assert conn.execute('SELECT typeof(age) FROM "TV Channel"').fetchone() == ("integer",)


def test_add_column_creates_missing_tables() -> None:
    schema = parse_schema("CREATE TABLE orchestra (Conductor_ID VARCHAR)")
    copy = schema.copy()
    copy.add_column("orchestra", "Year_of_Founded")
    copy.add_column("performance", "Share")
    copy.add_column("ORCHESTRA", "conductor_id")  # present already
    assert [c.name for c in copy.table("orchestra").columns] == ["Conductor_ID", "Year_of_Founded"]
    assert copy.table("performance") is not None
    assert schema.table("performance") is None  # the original is untouched


def test_odd_statements_fall_back_to_plain_reading_and_types_are_sanitised() -> None:
    schema = parse_schema("CREATE TABLE t (a VARCHAR, b INTEGER) WITH junk; CREATE TABLE u (x $$$, y DECIMAL(5, 2)); ;")
    assert [(c.name, c.declared_type) for c in schema.table("t").columns] == [("a", "VARCHAR"), ("b", "INTEGER")]
    assert [(c.name, c.declared_type) for c in schema.table("u").columns] == [("x", ""), ("y", "REAL(5, 2)")]
    conn = sqlite3.connect(":memory:")
    for statement in schema.ddl():
        conn.execute(statement)  # a stray `$$$` type must not reach the DDL
