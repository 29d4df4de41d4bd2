"""TAT-QA runs scored by value: the data split keeps a context's questions on one side, the
evaluation writes per-question verdicts and the official prediction files, and the official
scorer reads those files to the same EM and F1 as loratune's verdicts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from loratune.config import DataSettings, config_from_dict
from loratune.data import load_splits
from loratune.evaluation.base_vs_lora import evaluate_run
from loratune.evaluation.tatqa_scores import add_verdicts, tatqa_scores
from loratune.tasks import get_task
from loratune.training.run import train_run

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "tat-qa" / "sample.json"
sys.path.insert(0, str(Path(__file__).resolve().parent / "reference" / "tatqa"))
import tatqa_metric as official  # noqa: E402  (MIT, NExTplusplus/TAT-QA; see tests/reference/tatqa)


def sample_rows() -> list[dict]:
    task = get_task("tat-qa")
    return task.expand_rows(json.loads(SAMPLE.read_text()))


def test_the_split_keeps_each_context_on_one_side():
    task = get_task("tat-qa")
    train, held_out = load_splits(DataSettings(train=str(SAMPLE), eval_fraction=0.34), task, seed=5)
    tables = lambda rows: {json.dumps(r["table"]) for r in rows}  # noqa: E731
    assert train and held_out and not tables(train) & tables(held_out)
    assert len(train) + len(held_out) == 36  # every question of the six contexts, once


def test_gold_targets_score_full_marks_and_garbage_none():
    rows = sample_rows()
    task = get_task("tat-qa")
    right, each = tatqa_scores([task.target(r) for r in rows], rows)
    assert right["tatqa_em"] == 1.0 and right["tatqa_f1"] == 1.0 and right["tatqa_scale"] == 1.0
    assert each["tatqa_em"] == [1.0] * len(rows)
    wrong, _ = tatqa_scores(["I do not know."] * len(rows), rows)
    assert wrong["tatqa_em"] == 0.0 and wrong["tatqa"]["unreadable"] == len(rows)


def test_official_files_score_as_the_verdicts_say(tmp_path):
    rows = sample_rows()[:12]
    task = get_task("tat-qa")
    lora = [task.target(r) if i % 3 else "answer: 7\nscale: million" for i, r in enumerate(rows)]
    records = [{} for _ in rows]
    add_verdicts(records, rows, {"base": ["answer: nothing"] * len(rows), "lora": lora}, tmp_path)
    predicted = json.loads((tmp_path / "tatqa_predictions.lora.json").read_text())
    assert set(predicted) == {r["uid"] for r in rows}
    metrics = official.TaTQAEmAndF1()
    for record, row in zip(records, rows):
        answer, scale = predicted[row["uid"]]
        metrics(ground_truth=row, prediction=answer, pred_scale=scale)
        detail = metrics.get_raw()[-1]
        assert record["uid"] == row["uid"]
        assert (record["verdicts"]["lora"]["em"], record["verdicts"]["lora"]["f1"]) == (detail["em"], detail["f1"])
    assert sum(r["verdicts"]["lora"]["em"] for r in records) == 8  # rows 0, 3, 6, 9 answer 7 million


def test_a_tatqa_run_evaluates_end_to_end(tmp_path, tiny_llama_dir):
    cfg = config_from_dict({
        "name": "tatqa", "model": str(tiny_llama_dir), "task": "tat-qa", "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(SAMPLE), "eval_fraction": 0.34, "use_chat_template": False,
                 "max_source_tokens": 256, "max_target_tokens": 48},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 2, "batch_size": 2, "eval_steps": 100, "precision": "fp32", "seed": 3},
        "eval": {"limit": 3, "generation": {"max_new_tokens": 8}},
    })
    result = train_run(cfg, log=lambda *_: None)
    metrics = evaluate_run(result.run_dir, log=lambda *_: None)
    assert {"tatqa_em", "tatqa_f1", "tatqa_scale"} <= set(metrics["lora"]) and "tatqa_em" in metrics["intervals"]
    rows = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["uid"] and set(r["verdicts"]) == {"base", "lora"} for r in rows)
    for variant in ("base", "lora"):
        official_file = json.loads((result.run_dir / f"tatqa_predictions.{variant}.json").read_text())
        assert set(official_file) == {r["uid"] for r in rows}
    assert "TAT-QA EM" in (result.run_dir / "metrics.md").read_text()
