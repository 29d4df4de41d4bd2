"""Run rows, one run in full and the live view, read from run directories written like training and
evaluation write them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from ui_helpers import make_run

from loratune.ui import runs


def test_a_finished_run_row_has_the_numbers_of_its_files(tmp_path):
    make_run(tmp_path, "sql1")
    [row] = runs.list_runs(tmp_path)
    assert row == {
        "name": "sql1", "state": "finished", "message": None, "task": "sql-create-context", "model": "tiny-model",
        "max_minutes": 15.0, "wall_time_s": 880.5, "steps": 50, "train_rows": 1000,
        "rows_seen": 50 * 4 * 2 * 1, "rows_seen_from": "steps",
        "headline": {"metric": "execution_accuracy", "base": 0.5, "lora": 0.5, "low": -0.25, "high": 0.25},
        "updated": "2026-01-02T03:04:05Z",
    }


def test_rows_seen_falls_back_to_tokens_when_the_batch_size_is_unknown():
    stats = {"train": {"source_tokens": {"mean": 60.0}, "target_tokens": {"mean": 20.0}}}
    summary = {"train_tokens": 8000}
    assert runs.rows_seen(summary, {"train": {"batch_size": "auto"}}, stats, 10) == (100, "tokens")
    assert runs.rows_seen({}, {}, {}, None) == (None, None)
    assert runs.rows_seen({"world_size": 2}, {"train": {"batch_size": 3, "grad_accum": 4}}, {}, 5) == (120, "steps")


def test_only_run_folders_are_listed_newest_first(tmp_path):
    make_run(tmp_path, "old")
    newer = make_run(tmp_path, "new", state=None)  # no status.json: an older loratune's run
    os.utime(newer / "metrics.json", (2e9, 2e9))
    (tmp_path / ".ui").mkdir()
    (tmp_path / "plots").mkdir()  # a folder that is not a run
    (tmp_path / "bad name").mkdir()
    (tmp_path / "file.txt").write_text("x")
    make_run(tmp_path.parent / f"{tmp_path.name}-outside", "victim")
    (tmp_path / "escape").symlink_to(tmp_path.parent / f"{tmp_path.name}-outside" / "victim")  # a link out
    (tmp_path / "alias").symlink_to(tmp_path / "old")  # a link within runs_dir is a run
    rows = runs.list_runs(tmp_path)
    assert [r["name"] for r in rows] == ["new", "alias", "old"]
    assert rows[0]["state"] == "finished" and rows[0]["updated"].startswith("2033-")
    assert runs.list_runs(tmp_path / "missing") == []


def test_a_dead_training_reads_as_interrupted_and_the_overlay_wins(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    make_run(tmp_path, "crashed", state="training", pid=dead.pid, checkpoint=True)
    row = runs.run_row(tmp_path / "crashed")
    assert row["state"] == "interrupted" and "--resume" in row["message"]
    overlay = {"crashed": ("training", "starting"), "queued1": ("queued", "1 training(s) ahead of it")}
    rows = {r["name"]: r for r in runs.list_runs(tmp_path, overlay)}
    assert rows["crashed"]["state"] == "training" and rows["queued1"]["state"] == "queued"
    assert rows["queued1"]["headline"] is None and rows["queued1"]["steps"] is None


def test_a_damaged_file_becomes_the_rows_message_not_an_error(tmp_path):
    run = make_run(tmp_path, "broken")
    (run / "metrics.json").write_text("{not json")
    [row] = runs.list_runs(tmp_path)
    assert row["name"] == "broken" and "metrics.json" in row["message"] and row["headline"] is None


def test_run_detail_adds_config_status_summary_and_tables(tmp_path):
    run = make_run(tmp_path, "sql1")
    detail = runs.run_detail(run)
    assert detail["config"] == (run / "config.yaml").read_text()
    assert detail["status"]["state"] == "finished" and detail["summary"]["steps"] == 50
    assert detail["metrics_md"].startswith("| Metric")
    queued = runs.run_detail(tmp_path / "q", {"q": ("queued", None)}, config_text="name: q\n")
    assert queued["state"] == "queued" and queued["config"] == "name: q\n" and queued["status"] is None


def test_live_has_progress_curves_accuracy_and_the_newest_log(tmp_path):
    run = make_run(tmp_path, "sql1")
    (run / "progress.json").write_text(json.dumps({"base": {"accuracy": 0.1}, "points": [
        {"minutes": 5.0, "accuracy": 0.3}, {"minutes": 10.0, "accuracy": 0.4}, {"minutes": "x"}]}))
    (run / "log.txt").write_text("".join(f"line {i}\n" for i in range(100)))
    console = tmp_path / "console.log"
    view = runs.live(run, 3, console)
    assert view["state"] == "finished" and view["step"] == 50 and view["tokens_per_s"] == 45.4
    assert view["train_loss"][0] == [10, 1.8] and view["eval_loss"] == [[0, 1.5], [50, 0.5]]
    assert view["accuracy"] == [[0.0, 0.1], [5.0, 0.3], [10.0, 0.4]]
    assert view["log_tail"] == ["line 97", "line 98", "line 99"]
    console.write_text("console a\nconsole b\n")
    os.utime(console, (4e9, 4e9))
    assert runs.live(run, 5, console)["log_tail"] == ["console a", "console b"]
    assert runs.live(run, 0, console)["log_tail"] == []


@pytest.mark.parametrize("lines, count", [(0, 5), (1, 5), (10, 3), (50_000, 7)])
def test_tail_lines_reads_the_end_of_long_files(tmp_path, lines, count):
    path = tmp_path / "log.txt"
    path.write_text("".join(f"{i:08d} " + "x" * 40 + "\n" for i in range(lines)))
    expected = [f"{i:08d} " + "x" * 40 for i in range(lines)][-count:]
    assert runs.tail_lines(path, count, block=4096) == expected
    assert runs.tail_lines(tmp_path / "none", 3) == []


def test_a_changed_file_is_read_again(tmp_path):
    run = make_run(tmp_path, "sql1")
    assert runs.run_row(run)["steps"] == 50
    summary = json.loads((run / "run_summary.json").read_text())
    (run / "run_summary.json").write_text(json.dumps({**summary, "steps": 7, "pad": "longer now"}))
    assert runs.run_row(run)["steps"] == 7
