"""`loratune sql-eval` through the CLI on the shipped Spider rows and databases."""

import json
from pathlib import Path

from loratune.cli import main

ROOT = Path(__file__).resolve().parents[1]
GOLD = ROOT / "data" / "sql-create-context" / "val_with_db.jsonl"
DBS = ROOT / "data" / "sql-create-context" / "databases"


def test_sql_eval_json_and_per_example(capsys, tmp_path):
    gold = [json.loads(line) for line in GOLD.read_text().splitlines()][:6]
    gold_path = tmp_path / "gold.jsonl"
    gold_path.write_text("".join(json.dumps(g) + "\n" for g in gold))
    preds = [g["answer"] for g in gold]
    preds[1] = preds[1].upper()              # same query, other case: still a match
    preds[2] = "SELECT * FROM no_such_table"  # invalid
    preds[3] = "DROP TABLE singer"            # hostile: refused, reported invalid
    pred_path = tmp_path / "preds.txt"
    pred_path.write_text("\n".join(preds) + "\n")
    out = tmp_path / "per.jsonl"
    code = main(["sql-eval", "--gold", str(gold_path), "--pred", str(pred_path), "--db-dir", str(DBS),
                 "--per-example", str(out), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 6
    assert result["valid"] == 4 / 6
    assert result["execution_accuracy"] == 4 / 6
    assert result["execution_accuracy_real_db"] == 4 / 6
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["exec_match"] for r in rows] == [True, True, False, False, True, True]
    assert all("exec_match_real_db" in r for r in rows)
    assert "no such table" in rows[2]["error"] and "only SELECT" in rows[3]["error"]
    assert [r["error"] for r in rows[4:]] == [None, None]


def test_sql_eval_misaligned_and_missing_db_dir(capsys, tmp_path):
    gold_path = tmp_path / "gold.jsonl"
    gold_path.write_text(GOLD.read_text().splitlines()[0] + "\n")
    pred_path = tmp_path / "preds.txt"
    pred_path.write_text("SELECT 1\nSELECT 2\n")
    code = main(["sql-eval", "--gold", str(gold_path), "--pred", str(pred_path)])
    assert code == 1 and "aligned" in capsys.readouterr().err
    pred_path.write_text("SELECT 1\n")
    code = main(["sql-eval", "--gold", str(gold_path), "--pred", str(pred_path), "--db-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 1 and "nowhere" in err and "Traceback" not in err


def test_sql_eval_survives_a_literal_sqlite_cannot_store(capsys, tmp_path):
    """Regression: this prediction made `loratune sql-eval` die with `OverflowError: Python int too
    large to convert to SQLite INTEGER` while planting its literal into a synthesized database."""
    row = next(json.loads(line) for line in GOLD.read_text().splitlines()
               if "avg(age)" in json.loads(line)["answer"] and "country" in json.loads(line)["answer"])
    gold_path = tmp_path / "gold.jsonl"
    gold_path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    pred_path = tmp_path / "preds.txt"
    pred_path.write_text("SELECT avg(age) FROM singer WHERE country = 123456789012345678901234567890\n"
                         + row["answer"] + "\n")
    out = tmp_path / "per.jsonl"
    code = main(["sql-eval", "--gold", str(gold_path), "--pred", str(pred_path), "--db-dir", str(DBS),
                 "--per-example", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    result = json.loads(captured.out)
    assert result["n"] == 2 and result["execution_accuracy"] == result["execution_accuracy_real_db"] == 0.5
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert first["valid"] and not first["exec_match"] and first["exec_match_real_db"] is False
    assert "error" in first and second["exec_match"] and second["exec_match_real_db"]
