"""The answers view: filters by one metric's per-row scores, sorting by reference length, paging, and
the errors for runs without per-row scores."""

from __future__ import annotations

import json

import pytest
from ui_helpers import make_run

from loratune.errors import RequestError
from loratune.ui.answers import answers_page


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path, "sql1", rows=12)


def _indexes(page):
    return [row["index"] for row in page["rows"]]


def test_all_rows_with_the_headline_metric_by_default(run):
    page = answers_page(run)
    assert page["metric"] == "execution_accuracy" and page["metrics"] == ["execution_accuracy", "rougeL"]
    assert page["total"] == page["shown"] == 12 and _indexes(page) == list(range(12))
    first = page["rows"][0]
    assert first["prompt"] == "Question 0?" and first["reference"] == "SELECT" and first["lora"] == "lora answer 0"
    assert first["scores"]["lora"]["execution_accuracy"] == 1.0 and first["evidence"]["base"]["match"] is False
    assert "verdicts" not in first and "db_id" not in first


@pytest.mark.parametrize("how, metric, expected", [
    ("fixed", "execution_accuracy", [0, 4, 8]),
    ("broken", "execution_accuracy", [1, 5, 9]),
    ("wrong", "execution_accuracy", [1, 3, 5, 7, 9, 11]),  # a 0/1 metric: LoRA scored 0
    ("fixed", "rougeL", [0, 2, 4, 6, 8, 10]),
    ("broken", "rougeL", [1, 3, 5, 7, 9, 11]),
    ("wrong", "rougeL", [1, 3, 5, 7, 9, 11]),  # a graded metric: LoRA below the base
])
def test_filters(run, how, metric, expected):
    page = answers_page(run, how=how, metric=metric)
    assert _indexes(page) == expected and page["total"] == len(expected) and page["metric"] == metric


def test_sort_by_reference_length_and_page(run):
    longest_first = answers_page(run, sort="-length")
    lengths = [len(r["reference"]) for r in longest_first["rows"]]
    assert lengths == sorted(lengths, reverse=True)
    assert _indexes(longest_first)[:2] == [6, 5]  # 7 words, then 6 (ties keep file order)
    assert _indexes(answers_page(run, sort="length"))[:2] == [0, 7]
    page = answers_page(run, offset=10, limit=5)
    assert page["total"] == 12 and page["shown"] == 2 and _indexes(page) == [10, 11]
    assert answers_page(run, offset=50)["shown"] == 0


def test_rows_without_a_value_are_left_out_of_filters(run):
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    rows[0]["scores"]["lora"]["execution_accuracy"] = None  # no real database for this row, say
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert 0 not in _indexes(answers_page(run, how="fixed"))
    assert answers_page(run)["total"] == 12


@pytest.mark.parametrize("query, param", [
    ({"how": "better"}, "filter"), ({"sort": "name"}, "sort"), ({"offset": -1}, "offset"),
    ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"metric": "bleu"}, "metric"),
])
def test_bad_query_values_are_a_400_naming_the_parameter(run, query, param):
    with pytest.raises(RequestError) as caught:
        answers_page(run, **query)
    assert caught.value.status == 400 and caught.value.param == param


def test_old_runs_without_row_scores_and_unevaluated_runs_are_a_409(tmp_path):
    old = make_run(tmp_path, "old", scores=False)
    with pytest.raises(RequestError) as caught:
        answers_page(old)
    assert caught.value.status == 409 and "no per-row scores" in caught.value.message
    assert "--rescore" in caught.value.message
    (old / "predictions.jsonl").unlink()
    with pytest.raises(RequestError) as caught:
        answers_page(old)
    assert caught.value.status == 409 and "loratune eval" in caught.value.message


def test_chat_prompts_are_shown_as_text_and_task_fields_pass_through(tmp_path):
    run = make_run(tmp_path, "chat", rows=1)
    row = json.loads((run / "predictions.jsonl").read_text())
    row.update(prompt=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
               verdicts={"lora": {"em": 1}}, db_id="concert_singer")
    (run / "predictions.jsonl").write_text(json.dumps(row) + "\n")
    [shown] = answers_page(run)["rows"]
    assert shown["prompt"] == "system: Be brief.\nuser: Hi"
    assert shown["verdicts"] == {"lora": {"em": 1}} and shown["db_id"] == "concert_singer"
