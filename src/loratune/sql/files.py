"""The files of `loratune sql-eval`: gold JSONL in, predictions in, per-example JSONL out.

Gold is JSONL with `context` (CREATE TABLE statements), `answer` (gold SQL) and an optional
`db_id`. Predictions are aligned with the gold line for line: either a text file with one SQL
per line, or JSONL whose objects carry a `prediction` field. JSONL goes through loratune's one
reader (`json_files.read_jsonl`): errors name file and line, and a torn last line (what a killed
writer leaves) is dropped with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from loratune.errors import DataError, SqlError
from loratune.json_files import Records, read_jsonl, write_text
from loratune.sql.judge import judge_sql

logger = logging.getLogger(__name__)


def read_gold(path: str | Path) -> list[dict]:
    """Rows with `context`, `answer` and `db_id` (None when absent); blank lines are skipped."""
    path = Path(path)
    records = read_jsonl(path, number_rows=True)
    _warn_if_torn(path, records)
    rows = []
    for row in records:
        lineno = row.pop("_line")
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
    lines = _lines(path)
    first = next((line for line in lines if line.strip()), "")
    torn = False
    if first.lstrip().startswith("{"):  # no SQL starts with a brace
        records = read_jsonl(path, number_rows=True)
        _warn_if_torn(path, records)
        torn = records.torn_tail
        predictions = []
        for row in records:
            lineno = row.pop("_line")
            if "prediction" not in row:
                keys = ", ".join(sorted(row)) or "none"
                raise DataError(f"{path}:{lineno}: prediction row lacks 'prediction' (keys: {keys})")
            predictions.append("" if row["prediction"] is None else str(row["prediction"]))
    else:
        predictions = lines
    if len(predictions) != n:
        hint = " (its torn last line was left out)" if torn else ""
        raise SqlError(
            f"{path} has {len(predictions)} predictions{hint} but the gold has {n} rows; "
            "they must be aligned line for line"
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
    """The whole `loratune sql-eval` job: read, judge, optionally write one JSON object per row
    (the verdicts, `error` and `gold_error` included), and return the aggregates ({"n", "valid",
    "exact_match", "execution_accuracy", "execution_accuracy_real_db"})."""
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
        lines = [
            _json_line({"index": index, **record.as_dict(), "gold": row["answer"], "prediction": pred})
            for index, (row, pred, record) in enumerate(zip(gold, predictions, judgement.records))
        ]
        write_text(per_example_path, "".join(lines))
    return judgement.as_dict()


def _json_line(entry: dict) -> str:
    """One JSON line, readable UTF-8 where it can be; a prediction holding a lone surrogate
    (valid in JSON input, not encodable as UTF-8) is written with \\u escapes instead."""
    text = json.dumps(entry, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(entry, ensure_ascii=True)
    return text + "\n"


def _warn_if_torn(path: Path, records: Records) -> None:
    if records.torn_tail:
        logger.warning("%s: the last line is cut off (no newline, not JSON), as a killed writer leaves it; left out", path)


def _lines(path: Path) -> list[str]:
    """The lines of a text file of predictions, without line ends."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start an empty one
    return [line.rstrip("\r") for line in lines]
