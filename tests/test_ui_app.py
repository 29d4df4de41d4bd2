"""The ui's HTTP API through FastAPI's TestClient (and one real server on 127.0.0.1 for the load time):
every endpoint's shape, the API key, the loopback-only rule, chat through the serve routes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from serve_helpers import BackgroundServer, make_adapter_run
from ui_helpers import make_run

from loratune.cli import main
from loratune.errors import ServeError
from loratune.ui.app import create_ui_app, run_ui
from loratune.ui.launcher import Launch, Launcher

LOCAL = "http://127.0.0.1"


class QuickLauncher(Launcher):
    """Stands in for `loratune run` with a process that exits at once."""

    def command(self, launch: Launch) -> list[str]:
        return [sys.executable, "-c", "pass"]


@pytest.fixture
def folders(tmp_path):
    runs, configs = tmp_path / "runs", tmp_path / "configs"
    make_run(runs, "sql1", rows=12)
    make_run(runs, "sql2", rows=4)
    configs.mkdir()
    (configs / "demo.yaml").write_text("name: demo\ntrain:\n  max_steps: 3\n")
    return runs, configs


@pytest.fixture
def client(folders):
    runs, configs = folders
    app = create_ui_app(runs, configs, launcher=QuickLauncher(runs))
    with TestClient(app, base_url=LOCAL) as test_client:
        yield test_client


def _error(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["param"] == param
    return error


def test_the_page_and_only_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert client.get("/static/app.js").status_code == 200
    for path in ("/static/missing.js", "/static/..%2F__init__.py", "/static/%2e%2e", "/static/app.py"):
        assert client.get(path).status_code == 404, path


def test_runs_list_and_one_run(client):
    body = client.get("/api/runs").json()
    assert [r["name"] for r in body["runs"]] == ["sql1", "sql2"]
    assert body["queue"] == {"running": None, "queued": []}
    assert body["runs"][0]["headline"]["metric"] == "execution_accuracy"
    one = client.get("/api/runs/sql1").json()
    assert one["name"] == "sql1" and one["config"].startswith("model:") and one["summary"]["steps"] == 50
    assert one["status"]["state"] == "finished" and one["metrics_md"]
    _error(client.get("/api/runs/nope"), 404, "name")
    _error(client.get("/api/runs/.hidden"), 400, "name")


def test_live_answers_and_compare(client):
    live = client.get("/api/runs/sql1/live", params={"log_lines": 5}).json()
    assert live["state"] == "finished" and live["eval_loss"] == [[0, 1.5], [50, 0.5]] and live["log_tail"] == []
    _error(client.get("/api/runs/sql1/live", params={"log_lines": 5000}), 400, "log_lines")
    _error(client.get("/api/runs/sql1/live", params={"log_lines": "x"}), 400, "log_lines")
    page = client.get("/api/runs/sql1/answers", params={"filter": "fixed", "limit": 2}).json()
    assert page["total"] == 3 and page["shown"] == 2 and [r["index"] for r in page["rows"]] == [0, 4]
    _error(client.get("/api/runs/sql1/answers", params={"filter": "odd"}), 400, "filter")
    _error(client.get("/api/runs/sql1/answers", params={"metric": "bleu"}), 400, "metric")
    compare = client.get("/api/compare", params={"runs": "sql1,sql2"}).json()
    assert "| sql1 |" in compare["table"] and set(compare["curves"]) == {"sql1", "sql2"}
    assert compare["curves"]["sql2"]["train_loss"][0] == [10, 1.8]
    _error(client.get("/api/compare", params={"runs": "sql1,../x"}), 400, "runs")
    _error(client.get("/api/compare", params={"runs": ","}), 400, "runs")
    _error(client.get("/api/compare"), 400, "runs")


def test_configs_validate_start_and_stop(client, folders):
    runs, _ = folders
    assert client.get("/api/configs").json() == {"configs": [{"path": "demo.yaml",
                                                              "text": "name: demo\ntrain:\n  max_steps: 3\n"}]}
    assert client.post("/api/validate", json={"yaml": "name: demo\n", "set": ["train.lr=1e-3"]}).json() == {
        "ok": True, "name": "demo"}
    error = _error(client.post("/api/validate", json={"yaml": "name: demo\n", "set": ["train.lr=0"]}), 400, "train.lr")
    assert error["message"] == "config (with --set overrides): train.lr: must be positive"
    _error(client.post("/api/validate", json={"yaml": 5}), 400, "yaml")
    _error(client.post("/api/validate", content=b"name: x", headers={"content-type": "text/plain"}), 400)
    started = client.post("/api/runs", json={"yaml": "name: fresh\n"})
    assert started.status_code == 202 and started.json() == {"name": "fresh", "position": 0}
    assert client.app.state.launcher.wait_idle(60)
    assert (runs / ".ui" / "configs" / "fresh.yaml").is_file()
    row = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}["fresh"]
    assert row["state"] == "failed" and "before training started" in row["message"]  # `pass` wrote no status
    assert client.get("/api/runs/fresh").json()["config"].startswith("name: fresh")
    (runs / "sql1" / "adapter").mkdir()
    (runs / "sql1" / "adapter" / "adapter_config.json").write_text("{}")
    error = _error(client.post("/api/runs", json={"yaml": "name: sql1\n"}), 409, "name")  # an earlier run
    assert "--overwrite" in error["message"]
    _error(client.post("/api/runs/sql1/stop"), 409, "name")


class SleepLauncher(Launcher):
    """Stands in for `loratune run` with a process that loads for a minute (until Ctrl-C)."""

    def command(self, launch: Launch) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]


def test_queued_runs_show_and_stop(folders):
    runs, configs = folders
    launcher = SleepLauncher(runs)
    with TestClient(create_ui_app(runs, configs, launcher=launcher), base_url=LOCAL) as client:
        assert client.post("/api/runs", json={"yaml": "name: first\n"}).json() == {"name": "first", "position": 0}
        assert client.post("/api/runs", json={"yaml": "name: later\n"}).json() == {"name": "later", "position": 1}
        deadline = time.monotonic() + 30
        while launcher.snapshot()["running"] != "first" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/api/runs").json()["queue"] == {"running": "first", "queued": ["later"]}
        later = client.get("/api/runs/later").json()
        assert later["state"] == "queued" and later["config"].startswith("name: later")
        assert client.get("/api/runs/later/live").json()["state"] == "queued"
        assert client.get("/api/runs/first").json()["state"] == "training"  # starting
        for name, state in (("later", "removed"), ("first", "stopping")):
            stopped = client.post(f"/api/runs/{name}/stop")
            assert stopped.status_code == 202 and stopped.json() == {"state": state}
        assert launcher.wait_idle(60)
        assert client.get("/api/runs/first").json()["state"] == "interrupted"


def test_the_api_key_guards_the_api_but_not_the_page(folders):
    runs, configs = folders
    app = create_ui_app(runs, configs, api_key="sekret", launcher=QuickLauncher(runs))
    with TestClient(app, base_url="http://ui.example:7860") as client:  # with a key, any host name
        assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
        assert _error(client.get("/api/runs"), 401)["code"] == "invalid_api_key"
        _error(client.get("/api/runs", headers={"Authorization": "Bearer wrong"}), 401)
        assert client.get("/api/runs", headers={"Authorization": "Bearer sekret"}).status_code == 200
        _error(client.post("/api/chat/v1/chat/completions", json={}), 401)


def test_without_a_key_only_loopback_host_names_are_answered(client):
    for host in ("127.0.0.1:7860", "localhost", "[::1]:7860"):
        assert client.get("/api/runs", headers={"host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:7860", "127.0.0.1.evil.example", ""):
        assert _error(client.get("/", headers={"host": host}), 403)["code"] == "host_not_allowed"


def test_a_public_host_needs_an_api_key(tmp_path, capsys):
    with pytest.raises(ServeError, match="--api-key"):
        run_ui(tmp_path, host="0.0.0.0", port=7860)
    assert main(["ui", "--host", "0.0.0.0", "--runs-dir", str(tmp_path)]) == 1
    assert "needs --api-key" in capsys.readouterr().err


def test_chat_with_a_run_through_the_serve_routes(folders, tiny_llama_dir):
    runs, configs = folders
    make_adapter_run(tiny_llama_dir, runs / "chat.v1", task=None, seed=1)
    with TestClient(create_ui_app(runs, configs, launcher=QuickLauncher(runs)), base_url=LOCAL) as client:
        _error(client.post("/api/chat/v1/chat/completions", json={}), 409)  # nothing open yet
        _error(client.post("/api/chat/open", json={"run": "sql1"}), 409, "run")  # no adapter
        _error(client.post("/api/chat/open", json={"run": "../etc"}), 400, "run")
        assert client.post("/api/chat/open", json={"run": "chat.v1"}).json() == {"models": ["base", "chat-v1"]}
        served = client.app.state.chat._app
        assert client.post("/api/chat/open", json={"run": "chat.v1"}).status_code == 200
        assert client.app.state.chat._app is served  # the same run again: nothing reloaded
        request = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
        plain = client.post("/api/chat/v1/chat/completions", json={**request, "model": "base"})
        assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["role"] == "assistant"
        with client.stream("POST", "/api/chat/v1/chat/completions",
                           json={**request, "model": "chat-v1", "stream": True}) as streamed:
            lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["model"] == "chat-v1"
        assert _error(client.post("/api/chat/v1/chat/completions", json={**request, "model": "x"}), 404,
                      "model")["code"] == "model_not_found"


def test_load_time_with_50_runs_and_5000_answer_rows(tmp_path):
    runs = tmp_path / "runs"
    for i in range(49):
        make_run(runs, f"run{i:02d}", rows=8)
    make_run(runs, "big", rows=5000)
    app = create_ui_app(runs, tmp_path / "configs", launcher=QuickLauncher(runs))
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        timings = []
        for _ in range(2):  # cold (files parsed), then warm (parsed files kept)
            started, cpu = time.perf_counter(), time.process_time()  # CPU: server thread and client together
            assert http.get("/").status_code == 200
            listed = http.get("/api/runs").json()
            page = http.get("/api/runs/big/answers", params={"filter": "wrong", "limit": 100}).json()
            timings.append((time.perf_counter() - started, time.process_time() - cpu))
        assert len(listed["runs"]) == 50 and page["total"] == 2500 and page["shown"] == 100
    print("\nui load time, GET / + /api/runs (50 runs) + /api/runs/big/answers (5,000 rows): " + ", ".join(
        f"{label} {wall * 1000:.0f} ms wall ({cpu * 1000:.0f} ms CPU)" for label, (wall, cpu) in zip(("cold", "warm"),
                                                                                                   timings)))


def test_the_run_root_path_is_not_a_run(client):
    _error(client.get("/api/runs/%2E"), 400, "name")


def test_ui_is_a_cli_command():
    from loratune.cli import build_parser

    args = build_parser().parse_args(["ui"])
    assert (args.runs_dir, args.host, args.port, args.api_key, args.configs) == ("runs", "127.0.0.1", 7860, None,
                                                                                 "configs")


def test_static_files_exist_for_the_page():
    static = Path(__file__).resolve().parents[1] / "src" / "loratune" / "ui" / "static"
    assert (static / "index.html").is_file()
