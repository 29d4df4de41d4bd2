"""The one JSON/JSONL reader and writer: file:line errors, the torn-last-line policy, atomic writes."""

import json

import pytest

from loratune.errors import DataError
from loratune.json_files import append_jsonl, read_json, read_jsonl, write_json


def test_rows_are_read_with_line_numbers_and_blank_lines_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"x": 1}\n\n{"x": 2}\n')
    rows = read_jsonl(path, number_rows=True)
    assert rows == [{"x": 1, "_line": 1}, {"x": 2, "_line": 3}]
    assert not rows.torn_tail


def test_a_malformed_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"x": 1}\n{"x": \n{"x": 3}\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: malformed JSON line"):
        read_jsonl(path)
    path.write_text('{"x": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: expected a JSON object per line, got list"):
        read_jsonl(path)


def test_a_torn_last_line_is_dropped_but_a_complete_bad_last_line_is_an_error(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"x": 1}\n{"x": 2, "y": "unfini')  # a writer killed mid-line: no newline
    rows = read_jsonl(path)
    assert rows == [{"x": 1}] and rows.torn_tail
    path.write_text('{"x": 1}\n{"x": 2, "y": "unfini\n')  # ends with a newline: written whole, and wrong
    with pytest.raises(DataError, match=r"a.jsonl:2"):
        read_jsonl(path)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_jsonl(tmp_path / "nope.jsonl")
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"x": "caf\xe9"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        read_jsonl(bad)


def test_json_errors_name_the_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{\n  "x": 1,\n  oops\n}')
    with pytest.raises(DataError, match=r"a.json:3: malformed JSON"):
        read_json(path)


def test_write_json_replaces_atomically_and_append_adds_whole_lines(tmp_path):
    path = tmp_path / "sub" / "v.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2, "u": "ü"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": 2, "u": "ü"}
    assert [p.name for p in path.parent.iterdir()] == ["v.json"]  # no temporary file left
    log = tmp_path / "log.jsonl"
    append_jsonl(log, [{"i": 1}])
    append_jsonl(log, [{"i": 2}, {"i": 3}])
    append_jsonl(log, [])
    assert log.read_text().endswith("\n")
    assert [r["i"] for r in read_jsonl(log)] == [1, 2, 3]
