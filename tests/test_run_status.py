"""A run's status.json: writing it, the state a reader sees (a dead writer, runs without a status), the
stop request, phases, and the training callbacks that write progress and obey a stop."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from loratune.errors import DataError, RunDirError, TrainingStopped
from loratune.run_status import (
    LOG,
    STATUS,
    STOP,
    append_log,
    clear_stop,
    phase,
    read_status,
    request_stop,
    run_state,
    stop_requested,
    write_status,
)


def dead_pid():
    """The pid of a process that has ended and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_file(path, text="{}"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def add_checkpoint(run):
    make_file(run / "checkpoints" / "checkpoint-4" / "adapter_config.json")


def add_adapter(run):
    make_file(run / "adapter" / "adapter_config.json")


def set_pid(run, pid):
    status = json.loads((run / STATUS).read_text())
    (run / STATUS).write_text(json.dumps({**status, "pid": pid}))


def test_the_file_names():
    assert (STATUS, STOP, LOG) == ("status.json", "stop.request", "log.txt")


def test_write_keeps_progress_fields_unless_given(tmp_path):
    write_status(tmp_path, "training", step=3, max_steps=10, elapsed_s=1.5, eta_s=5.0, tokens_per_s=99.0)
    write_status(tmp_path, "training", step=4, message="going")
    status = read_status(tmp_path)
    assert status["state"] == "training" and status["pid"] == os.getpid() and status["message"] == "going"
    assert (status["step"], status["max_steps"], status["eta_s"], status["tokens_per_s"]) == (4, 10, 5.0, 99.0)
    assert status["updated"].endswith("Z") and len(status["updated"]) == 20
    write_status(tmp_path, "trained", eta_s=None)
    status = read_status(tmp_path)
    assert status["message"] is None and status["eta_s"] is None and status["step"] == 4
    assert set(status) == {"state", "pid", "updated", "message", "step", "max_steps", "elapsed_s", "eta_s",
                           "tokens_per_s"}


def test_write_refuses_unknown_states_and_fields(tmp_path):
    with pytest.raises(ValueError, match="'running'"):
        write_status(tmp_path, "running")
    with pytest.raises(ValueError, match="'steps'"):
        write_status(tmp_path, "training", steps=3)


def test_read_status(tmp_path):
    assert read_status(tmp_path) is None
    (tmp_path / STATUS).write_text("[1]")
    with pytest.raises(DataError, match=r"status.json: expected a JSON object, got list"):
        read_status(tmp_path)
    write_status(tmp_path, "failed", message="x")  # a damaged status is replaced
    assert read_status(tmp_path)["message"] == "x"


@pytest.mark.parametrize("state", ["training", "evaluating", "finished", "failed", "interrupted", "trained"])
def test_a_live_writer_state_is_shown_as_written(tmp_path, state):
    write_status(tmp_path, state, message="m")
    now = run_state(tmp_path)
    assert (now.state, now.message, now.status["state"]) == (state, "m", state)


def test_a_dead_training_with_a_checkpoint_is_interrupted(tmp_path):
    write_status(tmp_path, "training", step=4)
    set_pid(tmp_path, dead_pid())
    assert run_state(tmp_path).state == "failed"  # no checkpoint yet
    assert "before its first checkpoint" in run_state(tmp_path).message
    add_checkpoint(tmp_path)
    now = run_state(tmp_path)
    assert now.state == "interrupted" and now.status["step"] == 4
    assert "ended without finishing" in now.message and f"{tmp_path / 'config.yaml'} --resume" in now.message


def test_a_dead_evaluation_is_interrupted_and_says_to_evaluate_again(tmp_path):
    add_adapter(tmp_path)
    write_status(tmp_path, "evaluating")
    set_pid(tmp_path, dead_pid())
    now = run_state(tmp_path)
    assert now.state == "interrupted" and f"loratune eval {tmp_path}" in now.message


def test_a_finished_state_does_not_depend_on_the_writer(tmp_path):
    write_status(tmp_path, "finished")
    set_pid(tmp_path, dead_pid())
    assert run_state(tmp_path).state == "finished"


def test_a_zombie_writer_counts_as_ended(tmp_path):
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        while True:  # exited, not reaped: a zombie
            state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
            if state == "Z":
                break
            time.sleep(0.01)
        add_checkpoint(tmp_path)
        write_status(tmp_path, "training")
        set_pid(tmp_path, proc.pid)
        assert run_state(tmp_path).state == "interrupted"
    finally:
        proc.wait()


@pytest.mark.parametrize("files, state", [
    (["metrics.json", "adapter/adapter_config.json"], "finished"),
    (["adapter/adapter_config.json", "checkpoints/checkpoint-2/adapter_config.json"], "trained"),
    (["checkpoints/checkpoint-2/adapter_config.json", "config.yaml"], "interrupted"),
    (["config.yaml"], "failed"),
    ([], "failed"),
])
def test_runs_without_a_status_are_judged_by_their_files(tmp_path, files, state):
    for name in files:
        make_file(tmp_path / name)
    now = run_state(tmp_path)
    assert now.state == state and now.status is None
    if state == "failed":
        assert "no status.json, adapter or checkpoint" in now.message


def test_an_unreadable_status_falls_back_to_the_files_and_says_why(tmp_path):
    add_adapter(tmp_path)
    (tmp_path / STATUS).write_text("{not json")
    now = run_state(tmp_path)
    assert now.state == "trained" and "status.json" in now.message and now.status is None


def test_the_stop_file(tmp_path):
    assert not stop_requested(tmp_path)
    request_stop(tmp_path)
    assert stop_requested(tmp_path) and "stop requested" in (tmp_path / STOP).read_text()
    write_status(tmp_path, "training")
    assert "stop requested" in run_state(tmp_path).message
    clear_stop(tmp_path)
    clear_stop(tmp_path)  # absent: fine
    assert not stop_requested(tmp_path)


def test_phase_writes_the_state_and_what_ended_it(tmp_path):
    with phase(tmp_path, "evaluating"):
        assert read_status(tmp_path)["state"] == "evaluating"
    assert read_status(tmp_path)["state"] == "evaluating"  # the caller writes the next state
    with pytest.raises(RunDirError), phase(tmp_path, "training"):
        raise RunDirError("runs/x: something the user can fix")
    assert (read_status(tmp_path)["state"], read_status(tmp_path)["message"]) == (
        "failed", "runs/x: something the user can fix")
    with pytest.raises(RuntimeError), phase(tmp_path, "training"):
        raise RuntimeError("CUDA out of memory")
    assert read_status(tmp_path)["message"] == "RuntimeError: CUDA out of memory"
    with pytest.raises(TrainingStopped), phase(tmp_path, "training"):
        raise TrainingStopped("stopped at step 2 of 9")
    assert (read_status(tmp_path)["state"], read_status(tmp_path)["message"]) == (
        "interrupted", "stopped at step 2 of 9")
    for state, says in (("training", "before the first checkpoint"), ("evaluating", "loratune eval")):
        with pytest.raises(KeyboardInterrupt), phase(tmp_path, state):
            raise KeyboardInterrupt
        assert read_status(tmp_path)["state"] == "interrupted" and says in read_status(tmp_path)["message"]


def test_append_log(tmp_path):
    append_log(tmp_path, "one")
    append_log(tmp_path, "two\n")
    assert (tmp_path / LOG).read_text() == "one\ntwo\n"


# ---------------------------------------------------------------- the training callbacks


def trainer_state(step, max_steps=10, tokens=0):
    return SimpleNamespace(global_step=step, max_steps=max_steps, num_input_tokens_seen=tokens,
                           is_world_process_zero=True)


def test_progress_is_written_at_most_every_two_seconds_and_at_each_log(tmp_path):
    from loratune.training.status import ProgressToStatus

    now = [100.0]
    progress = ProgressToStatus(tmp_path, clock=lambda: now[0])
    progress.on_log(None, trainer_state(0), None)  # the evaluation before training: nothing yet
    assert read_status(tmp_path) is None
    progress.on_train_begin(None, trainer_state(0), None)
    now[0] = 105.0
    progress.on_step_end(None, trainer_state(1, tokens=100), None)  # first step: 5 s of one-time costs
    assert read_status(tmp_path)["step"] == 1 and read_status(tmp_path)["eta_s"] is None
    now[0] = 106.0
    progress.on_step_end(None, trainer_state(2, tokens=200), None)
    assert read_status(tmp_path)["step"] == 1  # 1 s after the last write
    progress.on_log(None, trainer_state(2, tokens=200), None)
    status = read_status(tmp_path)
    assert (status["step"], status["max_steps"], status["elapsed_s"]) == (2, 10, 6.0)
    assert (status["eta_s"], status["tokens_per_s"]) == (8.0, 100.0)  # 1 s per step after the first
    now[0] = 108.5
    progress.on_step_end(None, trainer_state(4, max_steps=5, tokens=400), None)  # the budget refit: 5 steps
    status = read_status(tmp_path)
    assert (status["step"], status["max_steps"], status["state"]) == (4, 5, "training")
    assert (status["eta_s"], status["tokens_per_s"]) == (1.2, 85.7)  # 3.5 s for 3 steps; 300 tokens


def test_the_stop_callback_stops_with_a_checkpoint_and_answers_the_request(tmp_path):
    from loratune.training.status import StopOnRequest

    stop = StopOnRequest(tmp_path)
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    stop.on_step_end(None, trainer_state(3), control)
    assert not control.should_training_stop and stop.stopped_at is None
    request_stop(tmp_path)
    stop.on_step_end(None, trainer_state(4), control)
    assert control.should_save and control.should_training_stop and not stop_requested(tmp_path)
    error = stop.stopped()
    assert isinstance(error, TrainingStopped) and error.exit_code == 3
    assert str(error).startswith("stopped at step 4 of 10; checkpoint-4 saved; continue with `loratune run ")


def test_a_stop_on_the_last_step_lets_the_run_end_whole(tmp_path):
    from loratune.training.status import StopOnRequest

    stop = StopOnRequest(tmp_path)
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    request_stop(tmp_path)
    stop.on_step_end(None, trainer_state(10), control)
    assert stop.stopped_at is None and not control.should_training_stop and not stop_requested(tmp_path)


# ---------------------------------------------------------------- the commands


def test_loratune_stop_asks_a_training_to_stop(tmp_path, capsys):
    from loratune.cli import main

    write_status(tmp_path, "training")  # this process is alive: a training as far as a reader knows
    assert main(["stop", str(tmp_path)]) == 0
    assert stop_requested(tmp_path)
    out = capsys.readouterr().out
    assert "stop requested" in out and f"loratune run {tmp_path / 'config.yaml'} --resume" in out


@pytest.mark.parametrize("state, says", [("finished", "not training (state finished)"),
                                         ("evaluating", "Ctrl-C")])
def test_loratune_stop_refuses_what_is_not_training(tmp_path, capsys, state, says):
    from loratune.cli import main

    write_status(tmp_path, state)
    assert main(["stop", str(tmp_path)]) == 1
    assert says in capsys.readouterr().err and not stop_requested(tmp_path)
    assert main(["stop", str(tmp_path / "missing")]) == 1
    assert "run directory not found" in capsys.readouterr().err


def fake_run(monkeypatch, run_dir, train):
    """`loratune run` without models: training as `train` does, evaluation recording the status it sees."""
    import loratune.config
    import loratune.evaluation.base_vs_lora
    import loratune.reporting.report
    import loratune.training.run

    seen = []
    cfg = SimpleNamespace(eval=SimpleNamespace(progress_rows=0))
    monkeypatch.setattr(loratune.config, "load_config", lambda *a: cfg)
    monkeypatch.setattr(loratune.training.run, "train_run", lambda *a, **k: train())
    monkeypatch.setattr(loratune.evaluation.base_vs_lora, "evaluate_run",
                        lambda *a, **k: seen.append(read_status(run_dir)["state"]))
    monkeypatch.setattr(loratune.reporting.report, "write_report", lambda d: (d / "report.md", d / "report.html"))
    return seen


def test_loratune_run_writes_evaluating_then_finished(tmp_path, monkeypatch, capsys):
    from loratune.cli import main
    from loratune.training.run import TrainResult

    def train():
        write_status(tmp_path, "trained", step=8)
        return TrainResult(run_dir=tmp_path, summary={})

    seen = fake_run(monkeypatch, tmp_path, train)
    assert main(["run", "x.yaml"]) == 0
    assert seen == ["evaluating"]
    assert (read_status(tmp_path)["state"], read_status(tmp_path)["step"]) == ("finished", 8)


def test_a_stopped_training_exits_3_without_evaluating(tmp_path, monkeypatch, capsys):
    from loratune.cli import main

    def train():
        raise TrainingStopped("stopped at step 3 of 8; checkpoint-3 saved; continue with ...")

    seen = fake_run(monkeypatch, tmp_path, train)
    assert main(["run", "x.yaml"]) == 3
    assert seen == []
    err = capsys.readouterr().err
    assert err == "loratune run: stopped at step 3 of 8; checkpoint-3 saved; continue with ...\n"


def test_loratune_eval_writes_the_status_of_a_trained_run_only(tmp_path, monkeypatch):
    import loratune.evaluation.base_vs_lora
    from loratune.cli import main

    seen = []
    monkeypatch.setattr(loratune.evaluation.base_vs_lora, "evaluate_run",
                        lambda run_dir, **k: seen.append(read_status(run_dir)))
    assert main(["eval", str(tmp_path / "not-a-run")]) == 0
    assert seen == [None] and not (tmp_path / "not-a-run").exists()
    add_adapter(tmp_path)
    assert main(["eval", str(tmp_path), "--output", str(tmp_path / "elsewhere")]) == 0
    assert seen[-1] is None
    assert main(["eval", str(tmp_path)]) == 0
    assert seen[-1]["state"] == "evaluating" and read_status(tmp_path)["state"] == "finished"
