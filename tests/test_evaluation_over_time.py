"""Accuracy against training minutes: checkpoint timing from a run's records, and the whole pass
(base + every checkpoint scored, progress.json, the plot) on a tiny model."""

import json
import shutil

import pytest
from run_helpers import SQL_ROWS

from loratune.config import config_from_dict
from loratune.errors import AdapterError
from loratune.evaluation.over_time import evaluate_progress, list_checkpoints, step_seconds
from loratune.reporting.plots import plot_accuracy_vs_time
from loratune.training.run import train_run


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_step_seconds_interpolates_elapsed_s_from_the_trainer_log(tmp_path):
    write_lines(tmp_path / "metrics.jsonl", [
        {"step": 0, "epoch": 0, "elapsed_s": 0.0, "eval_loss": 2.0},
        {"step": 10, "epoch": 0.5, "elapsed_s": 30.0, "loss": 1.5},
        {"step": 10, "epoch": 0.5, "elapsed_s": 36.0, "eval_loss": 1.4},  # the evaluation after step 10
        {"step": 20, "epoch": 1.0, "elapsed_s": 66.0, "loss": 1.0},
    ])
    seconds, source = step_seconds(tmp_path, [10, 15, 20, 30])
    assert source == "metrics.jsonl elapsed_s"
    # step 10 is saved after its evaluation (36 s); 15 is halfway to 66 s; 30 continues at 66 s per 20 steps
    assert seconds == {10: 36.0, 15: 51.0, 20: 66.0, 30: 99.0}


def test_step_seconds_without_elapsed_s_spreads_the_wall_time(tmp_path):
    write_lines(tmp_path / "metrics.jsonl", [{"step": 5, "epoch": 1.0, "loss": 1.0}])
    (tmp_path / "run_summary.json").write_text(json.dumps({"steps": 40, "wall_time_s": 120.0}))
    seconds, source = step_seconds(tmp_path, [10, 40])
    assert source.startswith("run_summary.json")
    assert seconds == {10: 30.0, 40: 120.0}


def test_a_run_without_checkpoints_or_adapter_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("task: sql-create-context\ndata:\n  train: x.jsonl\n")
    with pytest.raises(AdapterError, match="no checkpoints"):
        evaluate_progress(tmp_path, log=lambda *_: None)


@pytest.fixture(scope="module")
def sql_run(tmp_path_factory, tiny_llama_dir):
    tmp = tmp_path_factory.mktemp("progress")
    data = tmp / "sql.jsonl"
    write_lines(data, SQL_ROWS * 4)
    cfg = config_from_dict({
        "name": "sql", "model": str(tiny_llama_dir), "task": "sql-create-context", "output_dir": str(tmp / "runs"),
        "data": {"train": str(data), "eval": str(data), "max_eval_rows": 3},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 45, "lr": 2e-2, "batch_size": 6, "warmup_ratio": 0.0, "eval_steps": 15,
                  "save_total_limit": 10, "logging_steps": 5, "num_threads": 1},
        "eval": {"generation": {"max_new_tokens": 48}, "progress_rows": 3},
    })
    return train_run(cfg, log=lambda *_: None).run_dir


def test_every_checkpoint_is_scored_at_its_training_minute(sql_run):
    lines = []
    progress = evaluate_progress(sql_run, rows=3, log=lines.append)
    steps = [step for step, _ in list_checkpoints(sql_run)]
    assert steps == [15, 30, 45]
    assert [p["step"] for p in progress["points"]] == steps
    assert progress["rows"] == 3 and progress["metric"] == "execution_accuracy"  # no real databases here
    assert progress["time_source"] == "metrics.jsonl elapsed_s"
    # each point sits at the last elapsed_s the Trainer logged at its step (the save follows the evaluation)
    records = [json.loads(line) for line in (sql_run / "metrics.jsonl").read_text().splitlines()]
    for point in progress["points"]:
        elapsed = max(r["elapsed_s"] for r in records if r["step"] == point["step"] and "elapsed_s" in r)
        assert point["minutes"] == pytest.approx(elapsed / 60, abs=1e-3)
    minutes = [p["minutes"] for p in progress["points"]]
    assert minutes == sorted(minutes) and minutes[0] > 0
    # 45 steps at a high LR learn the training rows (two of three come out exact); the base gets none
    assert progress["base"]["accuracy"] == 0.0
    assert progress["points"][-1]["accuracy"] >= 2 / 3
    saved = json.loads((sql_run / "progress.json").read_text())
    assert saved["points"] == progress["points"]
    assert plot_accuracy_vs_time(sql_run, progress) == sql_run / "plots" / "accuracy_vs_time.png"
    assert (sql_run / "plots" / "accuracy_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(line.startswith("step45: execution_accuracy") for line in lines)


def test_the_final_adapter_is_the_best_checkpoint_only_when_the_run_kept_the_best(sql_run, tmp_path):
    # The Trainer records a best checkpoint even when load_best_model_at_end is off (train.keep_best:
    # false); the final adapter is then the last step's, whatever trainer_state.json says.
    run = tmp_path / "run"
    shutil.copytree(sql_run, run)
    state_path = run / "checkpoints" / "checkpoint-45" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["best_model_checkpoint"] = str(run / "checkpoints" / "checkpoint-15")
    state_path.write_text(json.dumps(state))
    quiet = dict(rows=1, log=lambda *_: None)
    assert evaluate_progress(run, **quiet)["final_adapter_step"] == 15
    assert evaluate_progress(run, overrides=["train.keep_best=false"], **quiet)["final_adapter_step"] == 45
