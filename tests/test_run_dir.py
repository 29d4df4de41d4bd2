"""A run directory: what counts as an earlier run, the training lock, reading it back."""

import json

import pytest

from loratune.errors import DataError, RunDirError
from loratune.run_dir import check_run_dir, load_run, open_run_dir


def test_only_an_adapter_or_a_checkpoint_makes_an_earlier_run(tmp_path):
    run = tmp_path / "r"
    check_run_dir(run, resume=False, overwrite=False)  # absent: fine
    run.mkdir()
    (run / "config.yaml").write_text("name: r\n")
    (run / "metrics.jsonl").write_text("")
    check_run_dir(run, resume=False, overwrite=False)  # a failed start's leftovers: fine
    with pytest.raises(RunDirError, match="nothing to resume"):
        check_run_dir(run, resume=True, overwrite=False)
    (run / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-5" / "adapter_config.json").write_text("{}")
    with pytest.raises(RunDirError, match="checkpoints of an unfinished run.*--resume"):
        check_run_dir(run, resume=False, overwrite=False)
    check_run_dir(run, resume=True, overwrite=False)
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(RunDirError, match="already holds a trained adapter"):
        check_run_dir(run, resume=False, overwrite=False)
    check_run_dir(run, resume=False, overwrite=True)


def test_open_clears_leftovers_and_the_lock_excludes_a_second_training(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("stale\n")
    with open_run_dir(run, resume=False, overwrite=False):
        assert not (run / "config.yaml").exists()
        with pytest.raises(RunDirError, match="another training is using"):
            with open_run_dir(run, resume=False, overwrite=False):
                pass
    with open_run_dir(run, resume=False, overwrite=False):  # released on exit, even after an error
        pass
    with pytest.raises(ValueError):
        with open_run_dir(run, resume=False, overwrite=False):
            raise ValueError("boom")
    with open_run_dir(run, resume=False, overwrite=False):
        pass


def test_load_run_reads_what_is_there_and_names_bad_files(tmp_path):
    with pytest.raises(RunDirError, match="run directory not found"):
        load_run(tmp_path / "nope")
    with pytest.raises(RunDirError, match="not a run directory"):
        load_run(tmp_path)
    (tmp_path / "run_summary.json").write_text(json.dumps({"steps": 3}))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    run = load_run(tmp_path)
    assert run.summary == {"steps": 3} and run.log == [{"step": 1, "loss": 2.0}] and run.metrics is None
    (tmp_path / "metrics.json").write_text("[1]")
    with pytest.raises(DataError, match="metrics.json: expected a JSON object"):
        load_run(tmp_path)
