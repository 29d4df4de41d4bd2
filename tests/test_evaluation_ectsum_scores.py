"""Earnings-call summaries scored by their numbers: ECTSum's numeric precision per variant, the
values its paired interval resamples, and the row it adds to the metric tables. Hand-written rows;
the real data is never copied into the repository."""

from __future__ import annotations

import json

import pytest

from loratune.config import config_from_dict
from loratune.evaluation.base_vs_lora import score_and_save, score_answers
from loratune.evaluation.ectsum_scores import bootstrap_values, ectsum_scores
from loratune.tasks import get_task

ROWS = [
    {"document": "Revenue was $1.5 billion.\nEPS was $1.10.", "summary": "revenue $1.5 billion.\neps $1.10."},
    {"document": "Sales rose 4% to 200 units.", "summary": "sales up 4%."},
    {"document": "Margins held.", "summary": "margins flat."},
    {"document": "Dividend of 25 cents.", "summary": "dividend 25 cents."},
]
BASE = ["revenue $1.5 billion, eps $1.20.",  # 1.5 supported, 1.20 not: 0.5
        "sales up.",                         # no number: left out
        "margins 30%.",                      # 0.0
        "dividend 25 cents."]                # 1.0
LORA = ["revenue $1.5 billion.\neps $1.10.",  # 1.0
        "sales up 4% to 200 units.",         # 1.0 (200 is in the transcript, not the reference)
        "margins flat.",                     # left out
        "dividend 25 cents, 3 times."]       # 0.5


def test_the_mean_over_the_summaries_that_hold_numbers() -> None:
    base, each = ectsum_scores(BASE, ROWS)
    assert base == {"num_precision": 0.5, "num_precision_summaries": 3}
    lora, _ = ectsum_scores(LORA, ROWS)
    assert lora["num_precision"] == pytest.approx(2.5 / 3) and lora["num_precision_summaries"] == 3
    # share 3/4: 0.5 + (s - 0.5) / 0.75 for a summary with numbers, 0.5 for the one without
    assert each["num_precision"] == pytest.approx([0.5, 0.5, 0.5 - 0.5 / 0.75, 0.5 + 0.5 / 0.75])


def test_bootstrap_values_average_to_the_aggregate() -> None:
    scores = [0.33, None, 1.0, None, 0.67, 0.0]
    mean = (0.33 + 1.0 + 0.67 + 0.0) / 4
    assert sum(bootstrap_values(scores, mean)) / len(scores) == pytest.approx(mean)
    assert bootstrap_values([1.0, 0.5], 0.75) == [1.0, 0.5]  # every summary with numbers: the scores themselves


def test_no_summary_with_numbers_has_no_score_and_no_interval() -> None:
    aggregate, each = ectsum_scores(["Revenue rose."] * len(ROWS), ROWS)
    assert aggregate == {"num_precision": None, "num_precision_summaries": 0} and each == {}


def test_an_ectsum_run_scores_rouge_and_numeric_precision_with_an_interval(tmp_path) -> None:
    cfg = config_from_dict({"name": "ectsum", "model": "smollm2-135m-instruct", "task": "ectsum",
                            "eval": {"bootstrap_samples": 200}})
    task = get_task("ectsum")
    references = [task.target(row) for row in ROWS]
    scores, each = score_answers(BASE, references, ROWS, task, cfg)
    assert {"rouge1", "rougeL", "num_precision"} <= set(scores) and len(each["num_precision"]) == len(ROWS)
    metrics = score_and_save(cfg, task, ROWS, references, BASE, LORA, tmp_path, 0.0, False, lambda *_: None)
    assert metrics["intervals"]["num_precision"]["diff"] == pytest.approx(2.5 / 3 - 0.5)
    assert json.loads((tmp_path / "metrics.json").read_text())["lora"]["num_precision"] == pytest.approx(2.5 / 3)
    assert "| Numeric precision | 0.8333 | 0.5000 | +0.3333 [" in (tmp_path / "metrics.md").read_text()


def test_other_tasks_get_no_numeric_precision() -> None:
    cfg = config_from_dict({"name": "news", "model": "smollm2-135m-instruct", "task": "cnn-dailymail"})
    rows = [{"article": row["document"], "highlights": row["summary"]} for row in ROWS]
    scores, _ = score_answers(BASE, [row["highlights"] for row in rows], rows, get_task("cnn-dailymail"), cfg)
    assert "num_precision" not in scores
