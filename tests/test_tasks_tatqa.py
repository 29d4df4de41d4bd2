"""The tat-qa task: TAT-QA's own JSON (contexts) and per-question JSONL rows, registered by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import shared_file

from loratune.data import check_columns, read_rows
from loratune.errors import DataError
from loratune.tasks import TASKS, get_task
from loratune.tasks.tatqa import TATQA, tatqa_row_from_message, tatqa_rows
from loratune.tatqa.render import INSTRUCTION

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "tat-qa" / "sample.json"


def test_registered_by_name() -> None:
    assert TASKS["tat-qa"] is TATQA
    assert get_task("tat-qa").family == "tat-qa" and TATQA.expand_rows is tatqa_rows


def test_sample_contexts_flatten_to_one_row_per_question() -> None:
    contexts = read_rows(str(SAMPLE))
    rows = tatqa_rows(contexts)
    assert (len(contexts), len(rows)) == (6, 36)
    check_columns(rows, TATQA)  # every row renders a prompt and a target
    first = rows[0]
    assert first["uid"] == contexts[0]["questions"][0]["uid"]
    assert first["table"] is contexts[0]["table"] and first["paragraphs"] is contexts[0]["paragraphs"]
    assert (first["_source"], first["_line"]) == (str(SAMPLE), 1)  # errors name the context
    assert rows[-1]["_line"] == 6
    assert {row["answer_type"] for row in rows} == {"span", "multi-span", "arithmetic", "count"}
    assert {row["scale"] for row in rows} == {"", "thousand", "million", "billion", "percent"}


def test_prompt_and_target_of_a_sample_row() -> None:
    rows = tatqa_rows(read_rows(str(SAMPLE)))
    row = next(r for r in rows if r["answer_type"] == "arithmetic" and r["scale"] == "percent")
    prompt, target = TATQA.prompt(row), TATQA.target(row)
    assert prompt.startswith(INSTRUCTION + "\nTable:\n")
    assert prompt.endswith(f"\nQuestion: {row['question'].strip()}\n")
    assert target.startswith("calculation: ") and target.endswith("\nscale: percent")


def test_jsonl_rows_give_the_same_prompts(tmp_path: Path) -> None:
    rows = tatqa_rows(read_rows(str(SAMPLE)))
    path = tmp_path / "tatqa.jsonl"
    fields = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
    path.write_text("".join(json.dumps(row) + "\n" for row in fields), encoding="utf-8")
    again = tatqa_rows(read_rows(str(path)))  # per-question rows pass through unchanged
    assert [TATQA.prompt(r) for r in again] == [TATQA.prompt(r) for r in rows]
    assert [TATQA.target(r) for r in again] == [TATQA.target(r) for r in rows]


def test_unflattened_contexts_are_reported_with_file_and_line() -> None:
    contexts = read_rows(str(SAMPLE))
    with pytest.raises(DataError, match=r"sample\.json:1: missing column 'question'"):
        check_columns(contexts, TATQA)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"table": [], "paragraphs": [], "questions": "nope", "_source": "f.json", "_line": 3},
         r"f\.json:3: a TAT-QA context needs a 'questions' list"),
        ({"paragraphs": [], "questions": []}, r"<data>:1: TAT-QA context lacks 'table'"),
        ({"table": [], "paragraphs": [], "questions": ["x"]}, "each entry of 'questions' must be an object"),
    ],
)
def test_malformed_contexts(record: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        tatqa_rows([record])


def test_bad_question_row_is_a_data_error_naming_the_line() -> None:
    row = {"table": [["a"]], "paragraphs": [], "question": "q", "answer": "x", "answer_type": "span", "scale": "",
           "_source": "q.jsonl", "_line": 7}
    with pytest.raises(DataError, match=r"q\.jsonl:7: a span answer must be a list"):
        check_columns([row], TATQA)


def test_row_from_message_splits_table_text_and_question() -> None:
    row = tatqa_row_from_message("Item | 2019 | 2018\nRevenue | 10 | 8\nRevenue grew on new contracts.\n"
                                 "What was the change in revenue?")
    assert row == {"table": [["Item", "2019", "2018"], ["Revenue", "10", "8"]],
                   "paragraphs": [{"order": 1, "text": "Revenue grew on new contracts."}],
                   "question": "What was the change in revenue?"}
    assert TATQA.prompt(row).endswith("Revenue | 10 | 8\nText:\nRevenue grew on new contracts.\n"
                                      "Question: What was the change in revenue?\n")


def test_sample_is_copied_unchanged_from_the_dev_set() -> None:
    dev = json.loads(shared_file("tat-qa/dev.json", "the TAT-QA dev set").read_text(encoding="utf-8"))
    sample = json.loads(SAMPLE.read_text(encoding="utf-8"))
    assert sample == [dev[i] for i in (46, 73, 112, 152, 257, 263)]
