"""The SQL judge end to end: validity, exact match, test-suite and real-database execution."""

from __future__ import annotations

import json
import sqlite3
import time
from decimal import Decimal
from pathlib import Path

import pytest

from loratune.errors import SqlError
from loratune.sql import judge_sql
from loratune.sql.evidence import MAX_CELL_CHARS, SHOWN_ROWS, json_cell, json_rows

SINGER = "CREATE TABLE singer (singer_id VARCHAR, name VARCHAR, country VARCHAR, age VARCHAR)"
CONCERT = SINGER + "; CREATE TABLE concert (concert_id VARCHAR, singer_id VARCHAR, year VARCHAR)"
SPIDER = Path(__file__).resolve().parents[1] / "data" / "sql-create-context"  # shipped Spider sample


def judge(gold: str, pred: str, context: str = SINGER, **kwargs):
    return judge_sql([gold], [pred], [context], **kwargs).records[0]


def test_validity_needs_a_parse_and_existing_tables_and_columns() -> None:
    assert judge("SELECT name FROM singer", "SELECT name FROM singer").valid
    for pred, why in [("SELECT nme FROM singer", "no such column"), ("SELECT name FROM singers", "no such table"),
                      ("SELEC name FROM singer", "parse"), ("", "empty")]:
        record = judge("SELECT name FROM singer", pred)
        assert not record.valid and not record.exec_match and why in record.error


def test_exact_match_is_normalised() -> None:
    record = judge("SELECT name FROM singer WHERE country = 'France'", 'select NAME from singer where "France" = country;')
    assert record.exact_match and record.exec_match
    assert not judge("SELECT name FROM singer WHERE age > 20", "SELECT name FROM singer WHERE NOT age <= 20").exact_match


@pytest.mark.parametrize(
    ("gold", "pred"),
    [
        ("SELECT name FROM singer WHERE age > 20", "SELECT name FROM singer WHERE NOT age <= 20"),
        ("SELECT name FROM singer WHERE age BETWEEN 20 AND 30", "SELECT name FROM singer WHERE age >= 20 AND age <= 30"),
        ("SELECT name FROM singer WHERE country IN ('France', 'Spain')",
         "SELECT name FROM singer WHERE country = 'Spain' OR country = 'France'"),
        ("SELECT DISTINCT country FROM singer", "SELECT country FROM singer GROUP BY country"),
        ("SELECT name, age FROM singer", "SELECT age, name FROM singer"),
        ("SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id WHERE T2.year = 2014",
         "SELECT singer.name FROM singer, concert WHERE concert.singer_id = singer.singer_id AND concert.year = '2014'"),
        ("SELECT name FROM singer", "SELECT name FROM singer ORDER BY age"),  # the gold does not order
        ("SELECT count(*) FROM singer WHERE singer_id NOT IN (SELECT singer_id FROM concert WHERE singer_id IS NOT NULL)",
         "SELECT count(*) FROM singer AS s WHERE NOT EXISTS (SELECT 1 FROM concert AS c WHERE c.singer_id = s.singer_id)"),
    ],
)
def test_equivalent_queries_that_differ_as_strings_match(gold: str, pred: str) -> None:
    record = judge(gold, pred, CONCERT)
    assert record.valid and not record.exact_match
    assert record.exec_match, record


@pytest.mark.parametrize(
    ("gold", "pred"),
    [
        # neighbours of numeric constants: > and >= differ only on rows equal to 20
        ("SELECT name FROM singer WHERE age > 20", "SELECT name FROM singer WHERE age >= 20"),
        # a changed constant
        ("SELECT name FROM singer WHERE age > 20", "SELECT name FROM singer WHERE age > 21"),
        # case variants of string constants: = is case-sensitive, LIKE is not
        ("SELECT name FROM singer WHERE country = 'France'", "SELECT name FROM singer WHERE country LIKE 'france'"),
        # NULLs: count(*) counts them, count(col) does not
        ("SELECT count(*) FROM singer", "SELECT count(name) FROM singer"),
        ("SELECT count(DISTINCT country) FROM singer", "SELECT count(*) FROM (SELECT DISTINCT country FROM singer)"),
        # NOT IN with a NULL in the subquery returns nothing, NOT EXISTS does not care
        ("SELECT count(*) FROM singer WHERE singer_id NOT IN (SELECT singer_id FROM concert)",
         "SELECT count(*) FROM singer AS s WHERE NOT EXISTS (SELECT 1 FROM concert AS c WHERE c.singer_id = s.singer_id)"),
        # duplicates: DISTINCT matters
        ("SELECT DISTINCT country FROM singer", "SELECT country FROM singer"),
        # an inner join drops dangling references
        ("SELECT count(*) FROM concert", "SELECT count(*) FROM concert AS c JOIN singer AS s ON c.singer_id = s.singer_id"),
        # aggregates and LIMIT
        ("SELECT max(age) FROM singer", "SELECT min(age) FROM singer"),
        ("SELECT country, count(*) FROM singer GROUP BY country", "SELECT country, count(*) FROM singer GROUP BY name"),
        ("SELECT name FROM singer ORDER BY age DESC LIMIT 1", "SELECT name FROM singer ORDER BY age DESC"),
        # ORDER BY sensitivity
        ("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer ORDER BY age DESC"),
        ("SELECT name, age FROM singer ORDER BY age", "SELECT name, age FROM singer"),
    ],
)
def test_queries_that_differ_only_on_rows_the_data_must_contain_are_told_apart(gold: str, pred: str) -> None:
    record = judge(gold, pred, CONCERT)
    assert record.valid
    assert not record.exec_match, record


def test_ties_under_order_by_limit_are_not_held_against_the_prediction() -> None:
    gold = "SELECT country FROM singer GROUP BY country ORDER BY count(*) DESC LIMIT 1"
    pred = "SELECT country FROM (SELECT country, count(*) AS n FROM singer GROUP BY country) ORDER BY n DESC, country DESC LIMIT 1"
    assert judge(gold, pred).exec_match


def test_a_gold_with_no_rows_anywhere_proves_nothing() -> None:
    gold = "SELECT name FROM singer WHERE age > 20 AND age < 10"
    assert not judge(gold, gold).exec_match


def test_gold_columns_missing_from_the_context_extend_the_schema() -> None:
    context = "CREATE TABLE orchestra (Orchestra_ID VARCHAR); CREATE TABLE performance (Orchestra_ID VARCHAR)"
    gold = ("SELECT Year_of_Founded FROM orchestra AS T1 JOIN performance AS T2 ON T1.Orchestra_ID = T2.Orchestra_ID "
            "GROUP BY T2.Orchestra_ID HAVING COUNT(*) > 1")
    record = judge(gold, gold, context)
    assert not record.valid and record.exec_match  # invalid on the context as given, right on the data


HOSTILE = {
    "endless recursive CTE": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    "endless rows": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c",
    "billion-row cross join": "SELECT count(*) FROM " + ", ".join(f"singer AS s{i}" for i in range(20)),
    "syntax bomb": "SELECT " + "(" * 5000 + "1" + ")" * 5000,
    "second statement": "SELECT name FROM singer; DROP TABLE singer",
    "attach": "ATTACH DATABASE '/tmp/loratune-evil.db' AS evil",
    "pragma": "PRAGMA writable_schema = ON",
    "load_extension": "SELECT load_extension('/tmp/evil.so')",
    "blob bomb": "SELECT zeroblob(1000000000)",
    "printf bomb": "SELECT printf('%.*c', 1000000000, 'x')",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_predictions_are_stopped_within_the_limit_and_reported(name: str, tmp_path: Path) -> None:
    db_dir = _spider_dir(tmp_path)
    started = time.perf_counter()
    judgement = judge_sql(["SELECT name FROM singer", "SELECT name FROM singer"], [HOSTILE[name], "SELECT name FROM singer"],
                          [SINGER, SINGER], db_ids=["music", "music"], db_dir=db_dir, timeout_s=0.5)
    elapsed = time.perf_counter() - started
    hostile, after = judgement.records
    assert not hostile.valid and not hostile.exec_match and hostile.exec_match_real_db is False
    assert hostile.error
    assert elapsed < 4.0, f"{name} took {elapsed:.2f}s"  # stopped at its first 0.5s run; 8x for a slow runner
    assert after.valid and after.exec_match and after.exec_match_real_db  # the run goes on
    assert not Path("/tmp/loratune-evil.db").exists()


def _spider_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "databases" / "music"
    folder.mkdir(parents=True)
    conn = sqlite3.connect(folder / "music.sqlite")
    conn.execute("CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT, age INTEGER)")
    conn.executemany("INSERT INTO singer VALUES (?, ?, ?, ?)",
                     [(1, "Ann", "France", 30), (2, "Bo", "Spain", 41), (3, "Cy", "France", 25), (4, "Di", "Italy", 41)])
    conn.commit()
    conn.close()
    return tmp_path / "databases"


def test_real_database_verdicts_and_aggregates(tmp_path: Path) -> None:
    db_dir = _spider_dir(tmp_path)
    before = (db_dir / "music" / "music.sqlite").read_bytes()
    golds = ["SELECT name FROM singer WHERE age > 26", "SELECT count(*) FROM singer WHERE country = 'France'", "SELECT name FROM singer"]
    preds = ["SELECT name FROM singer WHERE age >= 30", "SELECT count(*) FROM singer WHERE country = 'France'", "SELECT nam FROM singer"]
    judgement = judge_sql(golds, preds, [SINGER] * 3, db_ids=["music", "music", None], db_dir=db_dir)
    first, second, third = judgement.records
    # the real data cannot tell `> 26` from `>= 30`; the synthesized databases can
    assert first.exec_match_real_db is True and first.exec_match is False
    assert second.exec_match_real_db is True and second.exec_match and second.exact_match
    assert third.exec_match_real_db is None and not third.valid
    assert judgement.as_dict() == {"n": 3, "valid": 2 / 3, "exact_match": 1 / 3, "execution_accuracy": 1 / 3,
                                   "execution_accuracy_real_db": 1.0}
    assert "exec_match_real_db" not in third.as_dict()
    assert (db_dir / "music" / "music.sqlite").read_bytes() == before
    assert judge_sql(golds, preds, [SINGER] * 3).as_dict()["execution_accuracy_real_db"] is None


def test_database_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(SqlError, match="nowhere"):
        judge_sql(["SELECT 1"], ["SELECT 1"], [SINGER], db_ids=["music"], db_dir=tmp_path / "nowhere")
    db_dir = _spider_dir(tmp_path)
    with pytest.raises(SqlError, match=r"concert_singer.*concert_singer\.sqlite.*music"):
        judge_sql(["SELECT 1"], ["SELECT 1"], [SINGER], db_ids=["concert_singer"], db_dir=db_dir)
    with pytest.raises(SqlError, match="aligned"):
        judge_sql(["SELECT 1", "SELECT 2"], ["SELECT 1"], [SINGER])


def test_deterministic_for_a_seed() -> None:
    golds = ["SELECT name FROM singer WHERE age > 20", "SELECT country, count(*) FROM singer GROUP BY country",
             "SELECT name FROM singer ORDER BY age DESC LIMIT 1"]
    preds = ["SELECT name FROM singer WHERE age >= 20", "SELECT country, count(name) FROM singer GROUP BY country",
             "SELECT name FROM singer WHERE age = (SELECT max(age) FROM singer)"]
    runs = [[r.as_dict() for r in judge_sql(golds, preds, [SINGER] * 3, seed=seed).records] for seed in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert [r["exec_match"] for r in runs[0]] == [r["exec_match"] for r in runs[2]] == [False, False, False]


def test_gold_against_itself_scores_everything_on_real_spider_rows() -> None:
    rows = [json.loads(line) for line in (SPIDER / "val_with_db.jsonl").read_text().splitlines()[:40]]
    golds = [r["answer"] for r in rows]
    judgement = judge_sql(golds, golds, [r["context"] for r in rows], db_ids=[r["db_id"] for r in rows],
                          db_dir=SPIDER / "databases")
    scores = judgement.as_dict()
    assert scores["exact_match"] == scores["execution_accuracy"] == scores["execution_accuracy_real_db"] == 1.0


@pytest.mark.parametrize("literal", ["123456789012345678901234567890", "-123456789012345678901234567890",
                                     "9223372036854775807", "-9223372036854775808", "1e999", "-1e999", "1e300",
                                     "x'00ff'", "''", "'日本語 🦜'", "'nan'", "'1e999'"])
def test_any_literal_gets_a_verdict(literal: str) -> None:
    """The planted constants of a prediction once crashed the judge (OverflowError from SQLite
    on 123456789012345678901234567890, ValueError on 1e999)."""
    for pred in (f"SELECT avg(age) FROM singer WHERE country = {literal}",
                 f"SELECT name FROM singer WHERE age > {literal} GROUP BY name HAVING count(*) > {literal}",
                 f"SELECT name FROM singer WHERE age BETWEEN {literal} AND 123456789012345678901234567890"):
        record = judge("SELECT avg(age) FROM singer WHERE country = 'France' AND age > 20", pred)
        assert record.valid and not record.exec_match and record.error is None, (pred, record)


def test_text_sqlite_cannot_take_is_invalid() -> None:
    record = judge("SELECT name FROM singer", "SELECT name FROM singer WHERE name = '\ud800'")
    assert not record.valid and not record.exec_match and "surrogate" in record.error
    record = judge("SELECT name FROM singer", "SELECT name FROM singer WHERE name = 'a\u0000b'")
    assert not record.valid and not record.exec_match and "null character" in record.error


def test_text_sqlite_refuses_is_no_exact_match() -> None:
    # sqlglot reads `BETWEEN 1 9` as `BETWEEN 1 AND 9`; SQLite does not
    record = judge("SELECT name FROM singer WHERE age BETWEEN 1 AND 9", "SELECT name FROM singer WHERE age BETWEEN 1 9")
    assert not record.valid and not record.exact_match and "syntax error" in record.error


def test_an_unforeseen_failure_becomes_that_rows_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    from loratune.sql import judge as judge_module

    real = judge_module.analyze_query

    def broken(tree, schema):
        if "'boom'" in tree.sql():
            raise KeyError("a bug in the judge")
        return real(tree, schema)

    monkeypatch.setattr(judge_module, "analyze_query", broken)
    golds = ["SELECT name FROM singer WHERE age > 20"] * 3
    preds = ["SELECT name FROM singer WHERE name = 'boom'", "SELECT name FROM singer WHERE age > 20", "SELECT x"]
    first, second, third = judge_sql(golds, preds, [SINGER] * 3).records
    assert (first.valid, first.exact_match, first.exec_match) == (False, False, False)
    assert first.error == "could not judge: KeyError: 'a bug in the judge'"
    assert second.exec_match and second.error is None  # the rows after it are judged as usual
    assert not third.valid and "no such column" in third.error


def test_a_row_that_spends_its_time_is_stopped_between_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    from loratune.sql import judge as judge_module

    real = judge_module.run_query

    def slow(conn, sql, *, timeout_s):
        time.sleep(0.1)  # every query just under its limit: only the row limit stops the row
        return real(conn, sql, timeout_s=timeout_s)

    monkeypatch.setattr(judge_module, "run_query", slow)
    started = time.perf_counter()
    records = judge_sql(["SELECT name FROM singer"] * 2, ["SELECT name FROM singer", "SELECT singer.name FROM singer"], [SINGER] * 2,
                        num_dbs=8, timeout_s=1.0, row_timeout_s=0.25).records
    elapsed = time.perf_counter() - started
    for record in records:
        assert not record.valid and not record.exec_match and "0.25s time limit" in record.error
    assert elapsed < 3.0  # 8 databases x 2 queries x 0.1 s each would be 1.6 s per row; each row stops at ~0.3 s
    with pytest.raises(SqlError, match="positive"):
        judge_sql(["SELECT 1"], ["SELECT 1"], [SINGER], row_timeout_s=0)


def test_evidence_shows_both_results_on_the_real_database(tmp_path: Path) -> None:
    db_dir = _spider_dir(tmp_path)
    golds = ["SELECT name FROM singer WHERE age > 26 ORDER BY name", "SELECT name FROM singer WHERE age > 26"]
    preds = ["SELECT name FROM singer WHERE age >= 30 ORDER BY name", "SELECT name FROM singer WHERE age > 40"]
    right, wrong = (r.evidence.as_dict() for r in judge_sql(golds, preds, [SINGER] * 2, db_ids=["music"] * 2,
                                                             db_dir=db_dir).records)
    assert right == {"ran": True, "error": None, "rows": [["Ann"], ["Bo"], ["Di"]], "row_count": 3,
                     "gold_rows": [["Ann"], ["Bo"], ["Di"]], "gold_row_count": 3, "match": True, "database": "real"}
    assert wrong["rows"] == [["Bo"], ["Di"]] and wrong["gold_row_count"] == 3 and not wrong["match"]


def test_evidence_on_synthesized_databases_keeps_the_mismatch() -> None:
    same = judge("SELECT name FROM singer WHERE age > 20", "SELECT name FROM singer WHERE age > 20").evidence
    assert same.database.startswith("synthesized") and same.ran and same.match
    assert same.gold_row_count and same.rows == same.gold_rows and same.row_count == same.gold_row_count
    differs = judge("SELECT name FROM singer WHERE age > 20", "SELECT name FROM singer WHERE age >= 20")
    assert not differs.exec_match and not differs.evidence.match and differs.evidence.ran
    assert "evidence" not in differs.as_dict()  # the sql-eval files keep their fields


def test_evidence_of_a_prediction_that_never_reached_data() -> None:
    refused = judge("SELECT name FROM singer", "SELEC name FROM singer").evidence
    assert (refused.database, refused.ran, refused.rows, refused.gold_row_count) == (None, False, [], None)
    assert "parse" in refused.error
    missing = judge("SELECT name FROM singer", "SELECT nme FROM singer").evidence
    assert (missing.database, missing.ran, missing.match) == ("schema", False, False)
    assert "no such column" in missing.error


def test_evidence_keeps_five_rows_as_json_values(tmp_path: Path) -> None:
    db_dir = _spider_dir(tmp_path)
    many = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 40) SELECT x, x'00ff', 1e999, '"
    record = judge_sql(["SELECT name FROM singer"], [many + "y" * 1000 + "' FROM c"], [SINGER], db_ids=["music"],
                       db_dir=db_dir).records[0]
    evidence = record.evidence.as_dict()
    assert evidence["row_count"] == 40 and len(evidence["rows"]) == SHOWN_ROWS
    assert evidence["rows"][0][:3] == [1, "X'00FF'", "inf"] and len(evidence["rows"][0][3]) == MAX_CELL_CHARS
    json.dumps(evidence, allow_nan=False)


def test_json_cell_converts_what_json_cannot_hold() -> None:
    assert json_cell((1, b"\x01", Decimal("2.5"), float("nan"), None, True)) == [1, "X'01'", 2.5, "nan", None, True]
    assert json_cell(memoryview(b"\xff" * 500)).startswith("X'FFFF") and len(json_cell(b"\xff" * 500)) == MAX_CELL_CHARS
    assert json_rows([(i,) for i in range(9)]) == [[0], [1], [2], [3], [4]]
