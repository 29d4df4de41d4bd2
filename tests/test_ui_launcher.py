"""Trainings started from the ui: validation with the CLI's messages, the one-at-a-time queue, stopping
(stop file for a training, Ctrl-C for a process still starting), and one real tiny run through it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from run_helpers import memorise_file

from loratune.errors import RequestError
from loratune.run_status import read_status, run_state
from loratune.ui.launcher import Launch, Launcher, validate_config

FAKE_TRAINING = """
import pathlib, sys, time
from loratune.run_status import stop_requested, write_status
run = pathlib.Path(sys.argv[1])
time.sleep(float(sys.argv[2]))  # loading
run.mkdir(parents=True, exist_ok=True)
write_status(run, "training")
deadline = time.time() + 120
while not stop_requested(run) and time.time() < deadline:
    time.sleep(0.05)
write_status(run, "interrupted", message="stopped at step 1")
sys.exit(3)
"""


class FakeLauncher(Launcher):
    """Runs a stand-in for `loratune run` that trains until asked to stop (after `load_s` of loading),
    or exits with `exit_code` at once when one is set for the run."""

    def __init__(self, runs_dir: Path, load_s: float = 0.0, exit_codes: dict[str, int] | None = None) -> None:
        super().__init__(runs_dir)
        self.load_s = load_s
        self.exit_codes = exit_codes or {}

    def command(self, launch: Launch) -> list[str]:
        if launch.name in self.exit_codes:
            return [sys.executable, "-c", f"import sys; sys.exit({self.exit_codes[launch.name]})"]
        return [sys.executable, "-c", FAKE_TRAINING, str(self.runs_dir / launch.name), str(self.load_s)]


def _wait(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("text, overrides, param, words", [
    ("name: a\ntrain:\n  lr: -1\n", [], "train.lr", "config: train.lr: must be positive"),
    ("name: a\nlora:\n  rank: 4\n", [], "lora.rank", "unknown key 'lora.rank'"),
    ("name: a\n", ["train.max_steps=many"], "train.max_steps", "(with --set overrides): train.max_steps"),
    ("name: a\n", ["oops"], "set", "--set oops: expected KEY=VALUE"),
    ("name: [a\n", [], None, "config: line 2 invalid YAML"),
    ("- a\n- b\n", [], None, "the top level must be a mapping"),
    ("name: a\nlora:\n  target_modules: [1]\n", [], "lora.target_modules", "lora.target_modules: expected"),
    ("name: a b\n", [], "name", "invalid run name"),
    ("x: &v [1, 2]\nname: *v\n", [], None, "YAML aliases (*name) are not accepted"),
    ("name: a/b\n", [], "name", "must be a plain directory name"),
])
def test_validation_gives_the_cli_message_and_the_key(tmp_path, text, overrides, param, words):
    with pytest.raises(RequestError) as caught:
        validate_config(text, overrides, tmp_path)
    assert caught.value.status == 400 and caught.value.param == param
    assert words in caught.value.message


def test_validation_forces_output_dir_into_runs_dir(tmp_path):
    cfg = validate_config("name: r1\noutput_dir: /etc\ntrain:\n  lr: 3e-3\n", ["train.max_steps=5"], tmp_path)
    assert cfg.run_dir == tmp_path / "r1" and cfg.train.lr == 0.003 and cfg.train.max_steps == 5


def test_the_queue_runs_one_at_a_time_and_stops_by_the_stop_file(tmp_path):
    launcher = FakeLauncher(tmp_path)
    try:
        assert launcher.submit("name: a\n", []) == ("a", 0)
        _wait(lambda: (read_status(tmp_path / "a") or {}).get("state") == "training")
        assert launcher.overlay() == {}  # its own process reports now
        assert launcher.submit("name: b\n", []) == ("b", 1)
        assert launcher.submit("name: c\n", []) == ("c", 2)
        assert launcher.snapshot() == {"running": "a", "queued": ["b", "c"]}
        assert launcher.overlay()["c"] == ("queued", "2 training(s) ahead of it")
        with pytest.raises(RequestError) as caught:
            launcher.submit("name: a\n", [])
        assert caught.value.status == 409 and caught.value.param == "name"
        assert launcher.stop("c") == "removed" and launcher.stop("b") == "removed"
        assert launcher.stop("a") == "stopping"
        assert launcher.wait_idle(120)
        state = run_state(tmp_path / "a")
        assert state.state == "interrupted" and state.message == "stopped at step 1"
        with pytest.raises(RequestError) as caught:
            launcher.stop("a")
        assert caught.value.status == 409 and "interrupted" in caught.value.message
        saved = (tmp_path / ".ui" / "configs" / "a.yaml").read_text()
        assert f"output_dir: {tmp_path}" in saved
        assert (tmp_path / ".ui" / "logs" / "a.log").read_text().startswith("$ ")
    finally:
        launcher.close()


def test_a_run_still_starting_is_stopped_with_ctrl_c_and_early_failures_are_shown(tmp_path):
    launcher = FakeLauncher(tmp_path, load_s=60.0, exit_codes={"bad": 2})
    try:
        launcher.submit("name: slow\n", [])
        _wait(lambda: launcher.snapshot()["running"] == "slow" and "slow" in launcher.overlay())
        assert launcher.overlay()["slow"][0] == "training"  # starting: no status.json of its own yet
        assert launcher.stop("slow") == "stopping"
        assert launcher.wait_idle(60)
        assert launcher.overlay()["slow"][0] == "interrupted"
        launcher.submit("name: bad\n", [])
        assert launcher.wait_idle(60)
        state, message = launcher.overlay()["bad"]
        assert state == "failed" and "exited with code 2" in message and "bad.log" in message
    finally:
        launcher.close()


def test_an_earlier_run_needs_resume_or_overwrite(tmp_path):
    run = tmp_path / "done"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    launcher = FakeLauncher(tmp_path)
    try:
        with pytest.raises(RequestError) as caught:
            launcher.submit("name: done\n", [])
        assert caught.value.status == 409 and "--overwrite" in caught.value.message
        with pytest.raises(RequestError) as caught:
            launcher.submit("name: done\n", [], resume=True)
        assert caught.value.status == 409 and "nothing to resume" in caught.value.message
        with pytest.raises(RequestError) as caught:
            launcher.submit("name: done\n", [], resume=True, overwrite=True)
        assert caught.value.status == 400 and caught.value.param == "overwrite"
        assert not (tmp_path / ".ui").exists()  # nothing written for a refused run
    finally:
        launcher.close()


def _files_outside(root: Path, inside: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and not p.is_relative_to(inside)}


def test_a_real_tiny_run_goes_through_the_queue(tmp_path, tiny_llama_dir):
    runs = tmp_path / "runs"
    data = memorise_file(tmp_path)
    text = (
        f"name: tiny\nmodel: {tiny_llama_dir}\ntask: prompt-completion\n"
        f"data:\n  train: {data}\n  eval: {data}\n  max_eval_rows: 4\n  use_chat_template: false\n"
        "lora:\n  r: 4\n  alpha: 8\n"
        "train:\n  max_steps: 4\n  batch_size: 6\n  logging_steps: 2\n  lr: 0.01\n  compile: false\n"
        "eval:\n  limit: 2\n  bootstrap_samples: 10\n  generation:\n    max_new_tokens: 4\n"
    )
    before = _files_outside(tmp_path, runs)
    launcher = Launcher(runs, cwd=tmp_path)
    try:
        assert launcher.submit(text, ["train.seed=3"]) == ("tiny", 0)
        assert launcher.wait_idle(1500), (runs / ".ui" / "logs" / "tiny.log").read_text()[-3000:]
    finally:
        launcher.close()
    log = (runs / ".ui" / "logs" / "tiny.log").read_text()
    assert run_state(runs / "tiny").state == "finished", log[-3000:]
    assert (runs / "tiny" / "adapter" / "adapter_config.json").is_file() and (runs / "tiny" / "report.md").is_file()
    rows = [json.loads(line) for line in (runs / "tiny" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and "scores" in rows[0]
    assert (runs / "tiny" / "log.txt").is_file() and "Report:" in log
    assert _files_outside(tmp_path, runs) == before  # the run wrote inside runs_dir only
    assert launcher.overlay() == {}
