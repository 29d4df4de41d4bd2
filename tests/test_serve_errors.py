"""Bad requests get their 4xx with an OpenAI-style error body, and the next good request works;
the API key, the bounded queue (429), CORS, and the startup errors of `loratune serve`."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from serve_helpers import BackgroundServer, client_for, make_adapter_run
from starlette.testclient import TestClient

from loratune.cli import main as cli_main
from loratune.errors import ServeError
from loratune.serve.app import ServeSettings, create_app, run_server
from loratune.serve.registry import open_registry

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def guarded(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server with an API key, one request at a time, a queue of one, and small limits."""
    runs = tmp_path_factory.mktemp("guarded-runs")
    fin = make_adapter_run(tiny_llama_dir, runs / "fin1", task="finance-alpaca", seed=2)
    registry = open_registry(None, [f"fin={fin}"])
    # Adapters may be loaded from this session's temporary folders (every test's tmp_path), not /tmp.
    settings = ServeSettings(api_key=KEY, max_batch_size=1, queue_size=1, max_tokens_limit=1000,
                             max_body_bytes=4096, batch_wait_s=0.0, adapter_roots=(tmp_path_factory.getbasetemp(),))
    app = create_app(registry, settings)
    with BackgroundServer(app) as server:
        yield SimpleNamespace(url=server.url, client=client_for(server.url, KEY), fin=fin, base=tiny_llama_dir, app=app)


def _chat(**overrides):
    return {"model": "base", "messages": HI, "max_tokens": 4, "temperature": 0, **overrides}


BAD_REQUESTS = [
    ("unknown model", "post", "/v1/chat/completions", _chat(model="nope"), 404, "model"),
    ("negative max_tokens", "post", "/v1/chat/completions", _chat(max_tokens=-5), 400, "max_tokens"),
    ("zero max_tokens", "post", "/v1/chat/completions", _chat(max_tokens=0), 400, "max_tokens"),
    ("huge max_tokens", "post", "/v1/chat/completions", _chat(max_tokens=10**6), 400, "max_tokens"),
    ("max_tokens over the context", "post", "/v1/completions",
     {"model": "base", "prompt": "hi", "max_tokens": 600}, 400, "max_tokens"),
    ("max_tokens not a number", "post", "/v1/chat/completions", _chat(max_tokens="many"), 400, "max_tokens"),
    ("temperature too high", "post", "/v1/chat/completions", _chat(temperature=2.5), 400, "temperature"),
    ("negative temperature", "post", "/v1/chat/completions", _chat(temperature=-0.1), 400, "temperature"),
    ("top_p zero", "post", "/v1/chat/completions", _chat(top_p=0), 400, "top_p"),
    ("n above one", "post", "/v1/chat/completions", _chat(n=3), 400, "n"),
    ("five stop sequences", "post", "/v1/chat/completions", _chat(stop=list("abcde")), 400, "stop"),
    ("missing messages", "post", "/v1/chat/completions", {"model": "base"}, 400, "messages"),
    ("empty messages", "post", "/v1/chat/completions", _chat(messages=[]), 400, "messages"),
    ("unknown role", "post", "/v1/chat/completions", _chat(messages=[{"role": "robot", "content": "x"}]),
     400, "messages[0]"),
    ("no user message", "post", "/v1/chat/completions",
     _chat(model="fin", messages=[{"role": "system", "content": "be brief"}]), 400, "messages"),
    ("prompt over the context", "post", "/v1/completions", {"model": "base", "prompt": "word " * 200}, 400, "prompt"),
    ("messages over the context", "post", "/v1/chat/completions",
     _chat(messages=[{"role": "user", "content": "w " * 300}]), 400, "messages"),
    ("two prompts", "post", "/v1/completions", {"model": "base", "prompt": ["a", "b"]}, 400, "prompt"),
    ("malformed JSON", "post", "/v1/chat/completions", b'{"model": "base", "messages": [', 400, None),
    ("not an object", "post", "/v1/chat/completions", b'["base"]', 400, None),
    ("body over the limit", "post", "/v1/chat/completions",
     _chat(messages=[{"role": "user", "content": "x" * 5000}]), 413, None),
    ("chunked body over the limit", "post", "/v1/chat/completions",
     iter([b'{"model": "base", "x": "', b"y" * 5000, b'"}']), 413, None),
    ("unknown route", "post", "/v1/embeddings", {"model": "base", "input": "x"}, 404, None),
    ("wrong method", "get", "/v1/chat/completions", None, 405, None),
    ("adapter name with a dot", "post", "/v1/adapters", {"name": "a.b", "path": "/tmp"}, 400, "name"),
    ("adapter named base", "post", "/v1/adapters", {"name": "base", "path": "/tmp"}, 400, "name"),
    ("adapter path outside the roots", "post", "/v1/adapters", {"name": "x", "path": "/nonexistent/run"}, 403, "path"),
    ("adapter path with a NUL byte", "post", "/v1/adapters", {"name": "x", "path": "a\u0000b"}, 400, "path"),
    ("unload unknown adapter", "delete", "/v1/adapters/nope", None, 404, "name"),
    ("unload the base", "delete", "/v1/adapters/base", None, 400, "name"),
]


@pytest.mark.parametrize("what,method,path,body,status,param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_then_good_request(guarded, what, method, path, body, status, param):
    kwargs: dict = {"headers": dict(AUTH), "timeout": 30}
    if isinstance(body, dict):
        kwargs["json"] = body
    elif body is not None:
        kwargs["content"] = body
        kwargs["headers"]["Content-Type"] = "application/json"
    response = httpx.request(method.upper(), guarded.url + path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] and set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    # The server carries on.
    good = guarded.client.chat.completions.create(model="fin", messages=HI, max_tokens=3, temperature=0)
    assert good.choices[0].finish_reason in ("length", "stop")


def test_error_messages_say_what_to_fix(guarded):
    def message(**body):
        return httpx.post(f"{guarded.url}/v1/chat/completions", json=_chat(**body), headers=AUTH).json()["error"]

    assert message(model="nope")["message"] == "the model 'nope' does not exist; served models: base, fin"
    assert message(model="nope")["code"] == "model_not_found"
    assert "over this server's limit of 1000" in message(max_tokens=5000)["message"]
    assert "less than or equal to 2" in message(temperature=3)["message"]
    long = httpx.post(f"{guarded.url}/v1/completions", json={"model": "base", "prompt": "word " * 200}, headers=AUTH)
    assert long.json()["error"]["code"] == "context_length_exceeded"
    assert "over this model's context of 512 tokens" in long.json()["error"]["message"]
    duplicate = httpx.post(f"{guarded.url}/v1/adapters", json={"name": "fin", "path": str(guarded.fin)}, headers=AUTH)
    assert duplicate.status_code == 409 and "already loaded" in duplicate.json()["error"]["message"]


def test_adapter_for_another_base_is_refused(guarded, tiny_t5_dir: Path, tmp_path: Path):
    t5_run = make_adapter_run(tiny_t5_dir, tmp_path / "t5run", task="finance-alpaca", seed=1)
    response = httpx.post(f"{guarded.url}/v1/adapters", json={"name": "t5", "path": str(t5_run)}, headers=AUTH)
    assert response.status_code == 400
    assert "was trained on" in response.json()["error"]["message"]
    assert [m.id for m in guarded.client.models.list().data] == ["base", "fin"]


def test_adapter_whose_weights_do_not_fit_leaves_nothing_behind(guarded, tmp_path: Path):
    broken = make_adapter_run(guarded.base, tmp_path / "broken", task="finance-alpaca", seed=4)
    config_path = broken / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["r"] = 8  # the saved weights have rank 4
    config_path.write_text(json.dumps(config))
    response = httpx.post(f"{guarded.url}/v1/adapters", json={"name": "fin2", "path": str(broken)}, headers=AUTH)
    assert response.status_code == 400 and "does not fit the base model" in response.json()["error"]["message"]
    assert [m.id for m in guarded.client.models.list().data] == ["base", "fin"]
    good = httpx.post(f"{guarded.url}/v1/adapters", json={"name": "fin2", "path": str(guarded.fin)}, headers=AUTH)
    assert good.status_code == 201
    first = guarded.client.chat.completions.create(model="fin", messages=HI, max_tokens=8, temperature=0)
    again = guarded.client.chat.completions.create(model="fin2", messages=HI, max_tokens=8, temperature=0)
    assert again.choices[0].message.content == first.choices[0].message.content  # same weights, same answer
    assert httpx.delete(f"{guarded.url}/v1/adapters/fin2", headers=AUTH).status_code == 200


def test_api_key_is_required_except_for_health_and_page(guarded):
    url = guarded.url
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/").status_code == 200 and "loratune" in httpx.get(f"{url}/").text
    for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", _chat()),
                               ("POST", "/v1/completions", {"model": "base", "prompt": "x"}),
                               ("POST", "/v1/adapters", {"name": "x", "path": str(guarded.fin)}),
                               ("DELETE", "/v1/adapters/fin", None)):
        missing = httpx.request(method, url + path, json=body)
        wrong = httpx.request(method, url + path, json=body, headers={"Authorization": "Bearer nope"})
        assert missing.status_code == wrong.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client_for(url, "wrong-key").models.list()
    assert [m.id for m in guarded.client.models.list().data] == ["base", "fin"]  # nothing was unloaded


def test_full_queue_answers_429_and_a_closed_stream_cancels_its_job(guarded, monkeypatch):
    engine = guarded.app.state.scheduler.engine
    admit, gate, taken = engine.admit, threading.Event(), []

    def gated_admit(jobs):  # holds the worker before the prefill until the test opens the gate
        taken.extend(jobs)
        gate.wait(30)
        admit(jobs)

    monkeypatch.setattr(engine, "admit", gated_admit)

    def health():
        return httpx.get(f"{guarded.url}/health").json()

    def wait_for(condition) -> None:
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)

    stream = guarded.client.chat.completions.create(model="fin", messages=HI, max_tokens=50, temperature=0, stream=True)
    chunks = iter(stream)
    next(chunks)  # the role chunk: the request is in
    wait_for(lambda: len(taken) == 1)
    second: dict = {}
    waiter = threading.Thread(target=lambda: second.update(r=guarded.client.chat.completions.create(
        model="base", messages=HI, max_tokens=3, temperature=0)))
    waiter.start()
    wait_for(lambda: health()["queued"] == 1)
    assert health() == {"status": "ok", "queued": 1, "running": 1}
    with pytest.raises(openai.RateLimitError, match="busy"):
        guarded.client.chat.completions.create(model="base", messages=HI, max_tokens=3, temperature=0)
    stream.close()  # the client goes away: the server cancels its job
    wait_for(lambda: taken[0].cancelled)
    assert taken[0].cancelled
    gate.set()
    waiter.join(timeout=30)
    assert taken[0].finish_reason == "cancelled" and taken[0].completion_tokens == 0
    assert second["r"].choices[0].finish_reason in ("length", "stop")
    assert health() == {"status": "ok", "queued": 0, "running": 0}


def test_cors_is_off_unless_asked_for(tiny_llama_dir: Path):
    registry = open_registry(str(tiny_llama_dir), [])
    preflight = {"Origin": "http://example.com", "Access-Control-Request-Method": "POST"}
    closed = TestClient(create_app(registry, ServeSettings()))
    assert "access-control-allow-origin" not in closed.get("/v1/models", headers={"Origin": "http://example.com"}).headers
    assert "access-control-allow-origin" not in closed.options("/v1/chat/completions", headers=preflight).headers
    opened = TestClient(create_app(registry, ServeSettings(cors=True, api_key=KEY)))
    answer = opened.options("/v1/chat/completions", headers=preflight)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "*"


def test_startup_errors(tiny_llama_dir: Path, tiny_t5_dir: Path, tmp_path: Path):
    llama_run = make_adapter_run(tiny_llama_dir, tmp_path / "a", task="finance-alpaca", seed=1)
    t5_run = make_adapter_run(tiny_t5_dir, tmp_path / "b", task="finance-alpaca", seed=1)
    cases = [
        ([], None, "nothing to serve"),
        (["sql"], None, "expected NAME=RUN_DIR"),
        (["base=" + str(llama_run)], None, "cannot be 'base'"),
        ([f"x={tmp_path / 'missing'}"], None, "no such run or adapter directory"),
        ([f"x={llama_run}", f"x={llama_run}"], None, "given twice"),
        ([f"x={llama_run}", f"y={t5_run}"], None, "different base models"),
        ([f"y={t5_run}"], str(tiny_llama_dir), "was trained on"),
    ]
    for specs, base, message in cases:
        with pytest.raises(ServeError, match=message):
            open_registry(base, specs)


def test_adapter_whose_base_moved_is_served_with_a_warning(tiny_llama_dir: Path, tmp_path: Path, caplog):
    run = make_adapter_run(tiny_llama_dir, tmp_path / "moved", task="finance-alpaca", seed=1)
    meta_path = run / "adapter" / "loratune.json"
    meta = json.loads(meta_path.read_text())
    meta.update(base_model="/gone/tiny-llama", base_path="/gone/tiny-llama")
    meta_path.write_text(json.dumps(meta))
    config_path = run / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "/gone/tiny-llama"
    config_path.write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="loratune.serve"):
        registry = open_registry(str(tiny_llama_dir), [f"fin={run}"])
    assert registry.names() == ["base", "fin"]
    assert "'/gone/tiny-llama', which is not on this machine" in caplog.text
    other = make_adapter_run(tiny_llama_dir, tmp_path / "other", task=None, seed=2)
    with pytest.raises(ServeError, match="different base models"):  # among adapters, bases must agree
        open_registry(None, [f"fin={run}", f"other={other}"])


def test_serve_command_reports_startup_errors_in_one_line(tiny_llama_dir: Path, tmp_path: Path, capsys):
    assert cli_main(["serve", "--adapter", "sql"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected NAME=RUN_DIR" in err
    missing = tmp_path / "no-such-folder"
    assert cli_main(["serve", "--base", str(tiny_llama_dir), "--adapter-root", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--adapter-root {missing}: no such folder" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}"):
            run_server(str(tiny_llama_dir), [], "127.0.0.1", port, None, False)
