"""The files of `loratune sql-eval`: gold JSONL in, predictions in, per-example JSONL out.

Gold is JSONL with `context` (CREATE TABLE statements), `answer` (gold SQL) and an optional
`db_id`. Predictions are aligned with the gold line for line: either a text file with one SQL
per line, or JSONL whose objects carry a `prediction` field.
"""

from __future__ import annotations

import json
from pathlib import Path

from loratune.errors import DataError, SqlError
from loratune.sql.judge import judge_sql


def read_gold(path: str | Path) -> list[dict]:
    """Rows with `context`, `answer` and `db_id` (None when absent); blank lines are skipped."""
    path = Path(path)
    rows = []
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        row = _json_object(path, lineno, line)
        for key in ("context", "answer"):
            if not isinstance(row.get(key), str):
                raise DataError(
                    f"{path}:{lineno}: gold row lacks a string {key!r} (keys: {', '.join(sorted(row)) or 'none'}); "
                    "each line needs 'context' (CREATE TABLE statements) and 'answer' (gold SQL)"
                )
        db_id = row.get("db_id")
        if db_id is not None and not isinstance(db_id, str):
            raise DataError(f"{path}:{lineno}: 'db_id' must be a string, got {type(db_id).__name__}")
        rows.append({"context": row["context"], "answer": row["answer"], "db_id": db_id or None})
    if not rows:
        raise DataError(f"{path}: no gold rows; expected JSONL with 'context' and 'answer' on each line")
    return rows


def read_predictions(path: str | Path, n: int) -> list[str]:
    """`n` predictions: JSONL with `prediction` when the first non-blank line is a JSON object,
    else one SQL per line (an empty line is an empty prediction)."""
    path = Path(path)
    lines = list(_lines(path))
    first = next((line for _no, line in lines if line.strip()), "")
    if first.lstrip().startswith("{"):  # no SQL starts with a brace
        predictions = []
        for lineno, line in lines:
            if not line.strip():
                continue
            row = _json_object(path, lineno, line)
            if "prediction" not in row:
                keys = ", ".join(sorted(row)) or "none"
                raise DataError(f"{path}:{lineno}: prediction row lacks 'prediction' (keys: {keys})")
            predictions.append("" if row["prediction"] is None else str(row["prediction"]))
    else:
        predictions = [line for _no, line in lines]
    if len(predictions) != n:
        raise SqlError(
            f"{path} has {len(predictions)} predictions but the gold has {n} rows; they must be aligned line for line"
        )
    return predictions


def sql_eval_files(
    gold_path: str | Path,
    pred_path: str | Path,
    *,
    db_dir: str | Path | None = None,
    num_dbs: int = 8,
    per_example_path: str | Path | None = None,
    seed: int = 0,
    timeout_s: float = 2.0,
) -> dict:
    """The whole `loratune sql-eval` job: read, judge, optionally write one JSON object per row,
    and return the aggregates ({"n", "valid", "exact_match", "execution_accuracy",
    "execution_accuracy_real_db"})."""
    gold = read_gold(gold_path)
    predictions = read_predictions(pred_path, len(gold))
    if db_dir is not None and not Path(db_dir).is_dir():
        raise SqlError(f"--db-dir {db_dir} does not exist; point it at a Spider-style folder (<db_id>/<db_id>.sqlite)")
    judgement = judge_sql(
        [row["answer"] for row in gold],
        predictions,
        [row["context"] for row in gold],
        db_ids=[row["db_id"] for row in gold],
        db_dir=db_dir,
        num_dbs=num_dbs,
        seed=seed,
        timeout_s=timeout_s,
    )
    if per_example_path is not None:
        out = Path(per_example_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as handle:
            for index, (row, pred, record) in enumerate(zip(gold, predictions, judgement.records)):
                entry = {"index": index, **record.as_dict(), "gold": row["answer"], "prediction": pred}
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return judgement.as_dict()


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start an empty one
    return [(i + 1, line.rstrip("\r")) for i, line in enumerate(lines)]


def _json_object(path: Path, lineno: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(row, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    return row
