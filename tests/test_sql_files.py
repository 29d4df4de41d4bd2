"""`loratune sql-eval` files: gold JSONL, predictions (text or JSONL), per-example output."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from loratune.errors import DataError, SqlError
from loratune.sql import read_gold, read_predictions, sql_eval_files

CONTEXT = "CREATE TABLE singer (name VARCHAR, country VARCHAR, age INTEGER)"


def write_gold(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_read_gold(tmp_path: Path) -> None:
    path = write_gold(tmp_path / "gold.jsonl", [{"context": CONTEXT, "answer": "SELECT name FROM singer", "db_id": "music", "question": "q"},
                                                {"context": CONTEXT, "answer": "SELECT 1"}])
    path.write_text(path.read_text() + "\n")  # a blank line at the end is fine
    assert read_gold(path) == [{"context": CONTEXT, "answer": "SELECT name FROM singer", "db_id": "music"},
                               {"context": CONTEXT, "answer": "SELECT 1", "db_id": None}]


def test_read_gold_errors_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps({"context": CONTEXT, "answer": "SELECT 1"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"gold\.jsonl:2: malformed JSON"):
        read_gold(path)
    path.write_text(json.dumps({"context": CONTEXT, "answer": "SELECT 1"}) + "\n" + json.dumps({"context": CONTEXT, "sql": "x"}) + "\n")
    with pytest.raises(DataError, match=r"gold\.jsonl:2: .*'answer'.*context, sql"):
        read_gold(path)
    with pytest.raises(DataError, match="file not found"):
        read_gold(tmp_path / "missing.jsonl")


def test_read_predictions_text_and_jsonl(tmp_path: Path) -> None:
    text = tmp_path / "preds.txt"
    text.write_text("SELECT name FROM singer;\n\nSELECT 1\n")
    assert read_predictions(text, 3) == ["SELECT name FROM singer;", "", "SELECT 1"]
    jsonl = tmp_path / "preds.jsonl"
    jsonl.write_text(json.dumps({"prediction": "SELECT 1", "id": 0}) + "\n" + json.dumps({"prediction": None}) + "\n")
    assert read_predictions(jsonl, 2) == ["SELECT 1", ""]
    jsonl.write_text(json.dumps({"prediction": "SELECT 1"}) + "\n" + json.dumps({"output": "x"}) + "\n")
    with pytest.raises(DataError, match=r"preds\.jsonl:2: .*'prediction'"):
        read_predictions(jsonl, 2)
    with pytest.raises(SqlError, match=r"preds\.txt has 3 predictions but the gold has 4 rows"):
        read_predictions(text, 4)


def test_sql_eval_files_end_to_end(tmp_path: Path) -> None:
    db_dir = tmp_path / "databases"
    (db_dir / "music").mkdir(parents=True)
    conn = sqlite3.connect(db_dir / "music" / "music.sqlite")
    conn.execute("CREATE TABLE singer (name TEXT, country TEXT, age INTEGER)")
    conn.executemany("INSERT INTO singer VALUES (?, ?, ?)", [("Ann", "France", 30), ("Bo", "Spain", 41)])
    conn.commit()
    conn.close()
    gold = write_gold(tmp_path / "gold.jsonl", [
        {"context": CONTEXT, "answer": "SELECT name FROM singer WHERE age > 35", "db_id": "music"},
        {"context": CONTEXT, "answer": "SELECT count(*) FROM singer WHERE country = 'France'", "db_id": "music"},
        {"context": CONTEXT, "answer": "SELECT name FROM singer ORDER BY age DESC"},
    ])
    preds = tmp_path / "preds.txt"
    preds.write_text("SELECT name FROM singer WHERE age >= 35\nselect COUNT(*) from singer where country = \"France\";\nSELECT nme FROM singer\n")
    out = tmp_path / "out" / "per_example.jsonl"
    scores = sql_eval_files(gold, preds, db_dir=db_dir, num_dbs=4, per_example_path=out)
    assert scores == {"n": 3, "valid": 2 / 3, "exact_match": 1 / 3, "execution_accuracy": 1 / 3,
                      "execution_accuracy_real_db": 1.0}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["valid"], r["exact_match"], r["exec_match"]) for r in rows] == [(True, False, False), (True, True, True), (False, False, False)]
    assert [r.get("exec_match_real_db") for r in rows] == [True, True, None]
    assert "exec_match_real_db" not in rows[2] and "no such column" in rows[2]["error"]
    assert sql_eval_files(gold, preds, num_dbs=4)["execution_accuracy_real_db"] is None
    with pytest.raises(SqlError, match="nowhere"):
        sql_eval_files(gold, preds, db_dir=tmp_path / "nowhere")


def test_a_torn_last_line_is_left_out_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What a killed writer leaves: a last line with no newline that does not parse (json_files.py's policy)."""
    gold = write_gold(tmp_path / "gold.jsonl", [{"context": CONTEXT, "answer": "SELECT 1"}] * 2)
    preds = tmp_path / "preds.jsonl"
    full = json.dumps({"prediction": "SELECT 1"}) + "\n"
    preds.write_text(full * 2 + '{"prediction": "SEL')
    assert read_predictions(preds, 2) == ["SELECT 1", "SELECT 1"]
    assert "last line is cut off" in caplog.text
    preds.write_text(full + '{"prediction": "SEL')
    with pytest.raises(SqlError, match=r"has 1 predictions \(its torn last line was left out\) but the gold has 2"):
        read_predictions(preds, 2)
    preds.write_text(full + "{not json\n" + full)  # a broken line in the middle is an error naming it
    with pytest.raises(DataError, match=r"preds\.jsonl:2: malformed JSON"):
        read_predictions(preds, 3)
    gold.write_text(gold.read_text() + '{"context": "CREATE')
    assert len(read_gold(gold)) == 2


def test_per_example_output_says_why_a_row_failed(tmp_path: Path) -> None:
    gold = write_gold(tmp_path / "gold.jsonl", [{"context": CONTEXT, "answer": "SELECT name FROM singer"}] * 4)
    preds = tmp_path / "preds.jsonl"
    hostile = ["SELECT name FROM singer WHERE age = 123456789012345678901234567890", "DROP TABLE singer",
               "SELECT name FROM singer WHERE name = '\ud800'", "SELECT name FROM singer"]
    preds.write_text("".join(json.dumps({"prediction": p}) + "\n" for p in hostile))
    out = tmp_path / "per.jsonl"
    scores = sql_eval_files(gold, preds, num_dbs=2, per_example_path=out)
    assert scores["n"] == 4 and scores["execution_accuracy"] == 1 / 4
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["prediction"] for r in rows] == hostile  # the lone surrogate is written escaped, and reads back
    assert rows[0]["error"] is None and rows[0]["valid"] and not rows[0]["exec_match"]
    assert "only SELECT" in rows[1]["error"] and "surrogate" in rows[2]["error"]
    assert rows[3]["exec_match"] and rows[3]["error"] is None
