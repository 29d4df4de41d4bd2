"""One reader and one writer for the JSON and JSONL files loratune reads and writes.

Data files, gold/prediction files and a run's logs all go through here, so they share one policy:

- every error names the file and the line;
- a malformed line is an error, except a *torn last line*: a final line with no newline that does not
  parse. That is what a writer killed mid-line leaves (a training or evaluation run killed with
  SIGKILL), so it is dropped and `torn_tail` on the result says so; the rows before it are intact;
- writes that replace a file are atomic (temporary file + rename), and appends end each record with a
  newline and flush, so a crash loses at most the record being written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from loratune.errors import DataError


class Records(list):
    """A list of JSON objects read from a file; `torn_tail` is True when a torn last line was dropped."""

    torn_tail: bool = False


def read_jsonl(path: str | Path, *, number_rows: bool = False) -> Records:
    """Read one JSON object per line (blank lines skipped). `number_rows` adds `_line` to each row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    rows = Records()
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # the last line has no newline after it: a torn write
                rows.torn_tail = True
                break
            raise DataError(f"{path}:{number}: malformed JSON line ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        if number_rows:
            row["_line"] = number
        rows.append(row)
    return rows


def read_json(path: str | Path) -> Any:
    """Read a whole JSON document; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def read_json_or_none(path: str | Path) -> Any:
    """`read_json` for optional files: None when the file does not exist."""
    return read_json(path) if Path(path).is_file() else None


def write_json(path: str | Path, value: Any) -> None:
    """Replace `path` with `value` as indented JSON, atomically: readers see the old or the new file."""
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Replace `path` with `text` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows, one JSON object per line, flushed to the OS before returning."""
    path = Path(path)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if not text:
        return
    with path.open("a", encoding="utf-8") as out:
        out.write(text)
        out.flush()
