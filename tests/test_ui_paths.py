"""Names and paths a ui request may carry: run names, run folders and config files stay inside their
roots, symlinks resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from loratune.errors import RequestError
from loratune.ui.paths import (
    check_run_name,
    config_path,
    console_log,
    existing_run,
    list_config_paths,
    run_path,
    saved_config,
)


@pytest.mark.parametrize("name", ["a", "run-1", "sql_15min.v2", "A" * 100, "9lives"])
def test_plain_run_names_pass(name):
    assert check_run_name(name) == name


@pytest.mark.parametrize("name", ["", ".ui", "..", "-x", "_x", "a/b", "a\\b", "a\x00b", "a b", "A" * 101, "é", "a\n",
                                  None, 3])
def test_other_run_names_are_a_400_naming_the_parameter(name):
    with pytest.raises(RequestError) as caught:
        check_run_name(name, param="run")
    assert caught.value.status == 400 and caught.value.param == "run"


def test_run_paths_stay_inside_runs_dir(tmp_path):
    runs = tmp_path / "runs"
    (runs / "ok").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (runs / "link").symlink_to(outside)
    (runs / "inner").symlink_to(runs / "ok")
    assert existing_run(runs, "ok") == runs / "ok"
    assert existing_run(runs, "inner") == runs / "inner"  # a link within runs_dir is fine
    with pytest.raises(RequestError) as caught:
        run_path(runs, "link")
    assert caught.value.status == 404 and "runs" in caught.value.message
    with pytest.raises(RequestError) as caught:
        existing_run(runs, "missing")
    assert caught.value.status == 404 and caught.value.code == "run_not_found"
    assert run_path(runs, "new") == runs / "new"  # may not exist yet (a queued run)


def test_a_symlink_loop_is_a_400_or_404(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(RequestError) as caught:
        run_path(tmp_path, "loop")
    assert caught.value.status in (400, 404)


def test_config_paths_are_relative_yaml_files_inside_the_folder(tmp_path):
    configs = tmp_path / "configs"
    (configs / "sub").mkdir(parents=True)
    (configs / "a.yaml").write_text("name: a\n")
    (configs / "sub" / "b.yml").write_text("name: b\n")
    (configs / "notes.txt").write_text("x")
    secret = tmp_path / "secret.yaml"
    secret.write_text("key: 1\n")
    (configs / "out.yaml").symlink_to(secret)
    assert config_path(configs, "a.yaml") == (configs / "a.yaml").resolve()
    assert config_path(configs, "sub/b.yml").name == "b.yml"
    assert list_config_paths(configs) == ["a.yaml", "sub/b.yml"]
    for bad, status in [("../secret.yaml", 400), (str(secret), 400), ("a.yaml\x00", 400), ("notes.txt", 400),
                        ("", 400), ("sub\\b.yml", 400), ("out.yaml", 404), ("missing.yaml", 404)]:
        with pytest.raises(RequestError) as caught:
            config_path(configs, bad)
        assert caught.value.status == status, bad
        assert caught.value.param == "path"
    assert list_config_paths(tmp_path / "none") == []


def test_the_ui_files_live_under_runs_dir_dot_ui(tmp_path):
    assert saved_config(tmp_path, "r1") == tmp_path / ".ui" / "configs" / "r1.yaml"
    assert console_log(tmp_path, "r1") == tmp_path / ".ui" / "logs" / "r1.log"
    with pytest.raises(RequestError):
        saved_config(tmp_path, "../x")


def test_run_path_of_the_root_itself_is_refused(tmp_path: Path):
    with pytest.raises(RequestError):
        run_path(tmp_path, ".")
