"""TAT-QA answers scored by value: each reply parsed, its calculation computed (`tatqa.calc`), and
judged with the official TAT-QA EM and F1 (`tatqa.metric`), overall and by answer type and source.

Besides loratune's own files, evaluation writes the official prediction format
(`tatqa_predictions.<variant>.json`: `{question uid: [answer, scale]}`), so the official
`tatqa_eval.py` can score the same answers unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loratune.json_files import write_text
from loratune.tatqa.judge import Verdict, judge_answers, metric_prediction, summarize_verdicts

TATQA_METRICS = ("tatqa_em", "tatqa_f1", "tatqa_scale")
"""The headline keys an evaluation of a tat-qa run adds to metrics.json (official EM, F1, scale accuracy)."""


def tatqa_scores(replies: list[str], rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Aggregate (official EM, F1, scale accuracy and their breakdowns) and per-question EM and F1
    (for paired bootstrap intervals) of one variant's replies."""
    verdicts = judge_answers(rows, replies)
    summary = summarize_verdicts(verdicts)
    aggregate = {"tatqa_em": summary["em"], "tatqa_f1": summary["f1"], "tatqa_scale": summary["scale"],
                 "tatqa": summary}
    per_question = {"tatqa_em": [v.em for v in verdicts], "tatqa_f1": [v.f1 for v in verdicts]}
    return aggregate, per_question


def official_prediction(verdict: Verdict) -> list[Any]:
    """[answer, scale] as the official `tatqa_eval.py` reads it (a list for several spans)."""
    return [metric_prediction(verdict.answer), verdict.scale]


def add_verdicts(records: list[dict[str, Any]], rows: list[dict[str, Any]], replies: dict[str, list[str]],
                 out: Path) -> None:
    """Put each question's uid and per-variant verdict on its predictions.jsonl record, and write
    `tatqa_predictions.<variant>.json` in the official format."""
    verdicts = {variant: judge_answers(rows, texts) for variant, texts in replies.items()}
    for i, (record, row) in enumerate(zip(records, rows)):
        record["uid"] = row.get("uid")
        record["verdicts"] = {variant: _verdict_fields(found[i]) for variant, found in verdicts.items()}
    for variant, found in verdicts.items():
        official = {str(row.get("uid")): official_prediction(v) for row, v in zip(rows, found)}
        write_text(out / f"tatqa_predictions.{variant}.json", json.dumps(official, ensure_ascii=False, indent=1) + "\n")


def _verdict_fields(verdict: Verdict) -> dict[str, Any]:
    return {"answer": verdict.answer, "scale": verdict.scale, "em": verdict.em, "f1": verdict.f1,
            "calculation": verdict.calculation, "error": verdict.error}
