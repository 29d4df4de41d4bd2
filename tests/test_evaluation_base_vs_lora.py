"""Evaluation end to end on tiny models: files, keys, tables, SQL metrics, per-row scores."""

import json
from pathlib import Path

import pytest
from run_helpers import SQL_ROWS

from loratune.config import config_from_dict
from loratune.errors import RunDirError
from loratune.evaluation.base_vs_lora import evaluate_run, prediction_records, score_both, score_variant
from loratune.evaluation.metrics import TEXT_METRICS
from loratune.tasks import get_task
from loratune.training.run import train_run

TATQA_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "tat-qa" / "sample.json"
EVIDENCE_KEYS = {"ran", "error", "rows", "row_count", "gold_rows", "gold_row_count", "match", "database"}


@pytest.fixture(scope="module")
def sql_run(tmp_path_factory, tiny_llama_dir):
    tmp = tmp_path_factory.mktemp("evalrun")
    data = tmp / "sql.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in SQL_ROWS * 4))
    cfg = config_from_dict({
        "name": "sql", "model": str(tiny_llama_dir), "task": "sql-create-context", "output_dir": str(tmp / "runs"),
        "data": {"train": str(data), "eval": str(data), "max_eval_rows": 3},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 40, "lr": 2e-2, "batch_size": 6, "warmup_ratio": 0.0, "eval_steps": 20},
        "eval": {"limit": 3, "generation": {"max_new_tokens": 48}, "bootstrap_samples": 200},
    })
    return train_run(cfg, log=lambda *_: None).run_dir


def test_eval_writes_predictions_metrics_and_tables(sql_run, tmp_path):
    lines = []
    metrics = evaluate_run(sql_run, log=lines.append)
    assert metrics["n"] == 3
    for variant in ("base", "lora"):
        for key in ("rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match", "bleu", "chrf",
                    "sql_valid", "sql_exact_match", "execution_accuracy"):
            assert 0.0 <= metrics[variant][key] <= 1.0, (variant, key)
        assert metrics[variant]["execution_accuracy_real_db"] is None  # no databases configured
    saved = json.loads((sql_run / "metrics.json").read_text())
    assert saved["base"] == metrics["base"] and saved["lora"] == metrics["lora"]
    rows = [json.loads(line) for line in (sql_run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]) >= {"prompt", "reference", "base", "lora"}
    assert rows[0]["reference"] in {r["answer"] for r in SQL_ROWS}
    table = (sql_run / "metrics.md").read_text()
    assert "|| Rouge-1 | Rouge-2 | Rouge-L | Rouge-Lsum |" in table
    assert "| LoRA Model |" in table and "| Base Model |" in table
    assert "Execution accuracy" in table
    assert any("Rouge-1" in line for line in lines)
    # the trained adapter memorised these rows, so it must beat the untrained base
    assert metrics["lora"]["rougeL"] > metrics["base"]["rougeL"]
    assert "execution_accuracy" in metrics["intervals"]
    interval = metrics["intervals"]["rougeL"]
    assert interval["low"] <= interval["diff"] <= interval["high"]
    # each row's scores average to the aggregate; each SQL answer's evidence says what it returned
    for variant in ("base", "lora"):
        for key in ("rougeL", "sql_valid", "execution_accuracy"):
            mean = sum(r["scores"][variant][key] for r in rows) / len(rows)
            assert mean == pytest.approx(metrics[variant][key], abs=1e-4), (variant, key)
        assert set(rows[0]["scores"][variant]) == {*TEXT_METRICS, "sql_valid", "sql_exact_match", "execution_accuracy"}
        assert all(set(r["evidence"][variant]) == EVIDENCE_KEYS for r in rows)
    right = [r["evidence"]["lora"] for r in rows if r["scores"]["lora"]["execution_accuracy"] == 1.0]
    assert all(e["ran"] and e["match"] and e["rows"] == e["gold_rows"] for e in right)


def test_eval_output_dir_and_other_file(sql_run, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(SQL_ROWS[0]) + "\n")
    metrics = evaluate_run(sql_run, overrides=[f"data.eval={other}"], output_dir=tmp_path / "out",
                           log=lambda *_: None)
    assert metrics["n"] == 1
    assert (tmp_path / "out" / "metrics.json").is_file()


def test_eval_of_a_non_run(tmp_path):
    with pytest.raises(RunDirError, match="not a run directory"):
        evaluate_run(tmp_path)
    with pytest.raises(RunDirError, match="run directory not found"):
        evaluate_run(tmp_path / "missing")


def test_a_killed_eval_keeps_its_answers_and_resumes(sql_run, tmp_path, monkeypatch):
    """A crash after the first answer keeps that answer on disk; the next run generates only the
    rest and ends with the answers an uninterrupted run gives."""
    import loratune.evaluation.base_vs_lora
    import loratune.inference.generate

    out_whole, out_killed = tmp_path / "whole", tmp_path / "killed"
    whole = evaluate_run(sql_run, output_dir=out_whole, overrides=["eval.batch_size=1"], log=lambda *_: None)
    real = loratune.inference.generate.generate_texts
    calls = []

    def crash_after_one_answer(model, tokenizer, kind, prompts, *args, on_answer, **kwargs):
        def save_then_die(index, text):
            on_answer(index, text)
            raise KeyboardInterrupt  # as a kill would: nothing after the first answer

        return real(model, tokenizer, kind, prompts, *args, on_answer=save_then_die, **kwargs)

    monkeypatch.setattr(loratune.evaluation.base_vs_lora, "generate_texts", crash_after_one_answer)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(sql_run, output_dir=out_killed, overrides=["eval.batch_size=1"], log=lambda *_: None)
    kept = [json.loads(line) for line in (out_killed / "predictions.base.jsonl").read_text().splitlines()]
    assert len(kept) == 1 and not (out_killed / "metrics.json").exists()
    # a torn last line, as a writer killed mid-line leaves, is dropped, not fatal
    with (out_killed / "predictions.base.jsonl").open("a") as handle:
        handle.write('{"i": 2, "key": "tor')
    calls.clear()
    monkeypatch.setattr(loratune.evaluation.base_vs_lora, "generate_texts", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    lines = []
    again = evaluate_run(sql_run, output_dir=out_killed, overrides=["eval.batch_size=1"], log=lines.append)
    assert sum(len(c) for c in calls) == 2 * 3 - 1  # everything but the kept answer
    assert any("1 answers kept" in line for line in lines)
    assert again["base"] == whole["base"] and again["lora"] == whole["lora"]
    predictions = (out_killed / "predictions.jsonl").read_text()
    assert predictions == (out_whole / "predictions.jsonl").read_text()


def test_rescore_judges_saved_answers_without_generating(sql_run, tmp_path, monkeypatch):
    import loratune.evaluation.base_vs_lora
    import loratune.inference.generate

    out = tmp_path / "out"
    with pytest.raises(RunDirError, match="--rescore needs saved answers for all 3 rows"):
        evaluate_run(sql_run, output_dir=out, rescore=True, log=lambda *_: None)
    first = evaluate_run(sql_run, output_dir=out, log=lambda *_: None)
    monkeypatch.setattr(loratune.evaluation.base_vs_lora, "load_model", lambda *a, **k: pytest.fail("rescore loaded the model"))
    monkeypatch.setattr(loratune.evaluation.base_vs_lora, "generate_texts", lambda *a, **k: pytest.fail("rescore generated"))
    # Re-judged with real databases this time: the same answers, a new metric filled in.
    dbs = tmp_path / "dbs" / "music"
    dbs.mkdir(parents=True)
    import sqlite3

    with sqlite3.connect(dbs / "music.sqlite") as db:
        db.execute("CREATE TABLE singer (name VARCHAR, age INTEGER)")
        db.executemany("INSERT INTO singer VALUES (?, ?)", [("a", 25), ("b", 41), ("c", 33)])
    rows = [dict(r, db_id="music") for r in SQL_ROWS]
    data = tmp_path / "with_db.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = evaluate_run(sql_run, output_dir=out, rescore=True, log=lambda *_: None,
                         overrides=[f"eval.sql.databases={tmp_path / 'dbs'}", f"data.eval={data}"])
    assert again["base"]["rougeL"] == first["base"]["rougeL"]
    assert again["lora"]["execution_accuracy_real_db"] is not None
    assert first["lora"]["execution_accuracy_real_db"] is None
    rescored = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(r["db_id"] == "music" for r in rescored)
    real = [r["scores"]["lora"]["execution_accuracy_real_db"] for r in rescored]
    assert sum(real) / len(real) == pytest.approx(again["lora"]["execution_accuracy_real_db"])
    for record in rescored:
        evidence = record["evidence"]["lora"]
        if record["scores"]["lora"]["execution_accuracy_real_db"] == 1.0:
            assert evidence["database"] == "real" and evidence["rows"] == evidence["gold_rows"]
        if evidence["database"] == "real":  # COUNT(*), MAX(age): one row; age > 30: two of the three singers
            assert evidence["gold_row_count"] == (2 if "age > 30" in record["reference"] else 1)


def _cfg(task: str):
    return config_from_dict({"name": task, "model": "smollm2-135m-instruct", "task": task,
                             "eval": {"bootstrap_samples": 50}})


def test_text_rows_get_every_text_metric_and_no_evidence() -> None:
    task = get_task("prompt-completion")
    rows = [{"prompt": "Colour of a lime:", "completion": "green"},
            {"prompt": "Colour of a plum:", "completion": "purple"}]
    references = [task.target(r) for r in rows]
    answers = {"base": ["blue", "purple"], "lora": ["green", "purple"]}
    scored = score_both(answers, references, rows, task, _cfg("prompt-completion"))
    records = prediction_records(rows, ["p0", "p1"], references, answers, scored)
    assert [r["scores"]["base"]["exact_match"] for r in records] == [0.0, 1.0]
    assert [r["scores"]["lora"]["exact_match"] for r in records] == [1.0, 1.0]
    assert set(records[0]["scores"]["lora"]) == set(TEXT_METRICS) and "evidence" not in records[0]
    assert records[0] == {"prompt": "p0", "reference": "green", "base": "blue", "lora": "green",
                          "scores": records[0]["scores"]}
    json.dumps(records, allow_nan=False)


def test_ectsum_rows_show_each_summarys_numeric_precision_not_its_bootstrap_value() -> None:
    task = get_task("ectsum")
    rows = [{"document": "Sales rose 4% to 200 units.", "summary": "sales up 4%."},
            {"document": "Margins held.", "summary": "margins flat."}]
    scores = score_variant(["sales up 4% to 300 units.", "margins held."], [task.target(r) for r in rows], rows,
                           task, _cfg("ectsum"))
    assert scores.per_row["num_precision"] == [0.5, None]  # 4 supported, 300 not; no number in the second
    assert scores.bootstrap["num_precision"] == [0.5, 0.5]  # the mean, resampled as ECTSum's ratio


def test_tatqa_rows_show_em_and_f1() -> None:
    task = get_task("tat-qa")
    rows = task.expand_rows(json.loads(TATQA_SAMPLE.read_text()))[:3]
    scores = score_variant([task.target(rows[0]), "answer: nothing", task.target(rows[2])],
                           [task.target(r) for r in rows], rows, task, _cfg("tat-qa"))
    assert scores.per_row["tatqa_em"] == [1.0, 0.0, 1.0] and scores.per_row["tatqa_f1"][0] == 1.0
