"""The server survives hostile clients: a seeded fuzz of malformed and hostile requests against a real
server on 127.0.0.1 (tiny Llama, one adapter, an API key, one allowed adapter folder).

Every answer is a 4xx with an OpenAI-style error body (never a 5xx, never a dropped connection),
and a good request succeeds after each burst. Loops are bounded in count and in time; traffic
goes to 127.0.0.1 only.
"""

from __future__ import annotations

import collections
import json
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from serve_helpers import BackgroundServer, make_adapter_run

from loratune.serve.app import ServeSettings, create_app
from loratune.serve.registry import open_registry

SEED = 20240610
KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PER_BURST = 40
"""Requests per burst; ten bursts make ~400 requests."""
BUDGET_S = 240.0
"""Wall-clock cap on the whole fuzz run (a loaded 2-core runner is slow); bursts stop at it."""
MAX_BODY = 16_384


@pytest.fixture(scope="module")
def server(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    runs = tmp_path_factory.mktemp("fuzz-runs")
    fin = make_adapter_run(tiny_llama_dir, runs / "fin1", task="finance-alpaca", seed=2)
    outside = make_adapter_run(tiny_llama_dir, tmp_path_factory.mktemp("outside") / "run", task=None, seed=3)
    (runs / "escape").symlink_to(outside)  # a link inside the root that points out of it
    settings = ServeSettings(api_key=KEY, max_batch_size=4, queue_size=32, max_tokens_limit=256,
                             max_body_bytes=MAX_BODY, batch_wait_s=0.0, adapter_roots=(runs,))
    app = create_app(open_registry(None, [f"fin={fin}"]), settings)
    with BackgroundServer(app) as running:
        yield SimpleNamespace(url=running.url, port=running.port, runs=runs, outside=outside, app=app)


def _valid_chat() -> dict:
    return {"model": "fin", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}


# Values that no field of a request accepts in the slot they are put in.
NOT_A_NUMBER = [[], {}, "many", [1], {"a": 1}, "1e999x"]
NOT_A_STRING = [1, 2.5, [], {}, True, None, ["x", 1]]
NOT_A_BOOL = ["maybe", [], {}, 2, -1, "yes please"]
NOT_A_LIST = [1, "text", True, {"role": "user"}]
WRONG_FIELDS: dict[str, list] = {
    "model": NOT_A_STRING + ["", "nope", "\ud800", "../../etc/passwd", "x" * 5000],
    "max_tokens": NOT_A_NUMBER + [-1, 0, -(10**30), 10**30, 257, 1.5],
    "temperature": NOT_A_NUMBER + [-0.1, 2.5, 1e308, -1e308],
    "top_p": NOT_A_NUMBER + [0, -1, 1.5],
    "n": NOT_A_NUMBER + [2, 0, -3, 10**9],
    "stream": NOT_A_BOOL,
    "stop": [1, {}, [""], ["a", "b", "c", "d", "e"], [1, 2], "", "\ud800"],
    "messages": NOT_A_LIST + [[], [{}], [{"role": "robot", "content": "x"}], [{"role": "user", "content": 5}],
                              [{"role": "user", "content": [{"type": "image_url"}]}],
                              [{"role": "system", "content": "no user here"}],
                              [{"role": "user", "content": "w " * 600}],
                              [{"role": "user", "content": "a\ud800b"}],
                              [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]],
}


def _json(body: object) -> bytes:
    return json.dumps(body).encode()


def _deep(depth: int, rng: random.Random) -> bytes:
    opening, closing = ("[", "]") if rng.random() < 0.5 else ('{"a":', "}")
    return (opening * depth + "1" + closing * depth).encode()


Request = tuple[str, str, dict[str, str], bytes | Iterator[bytes] | None]


def _malformed_json(rng: random.Random) -> Request:
    valid = _json(_valid_chat())
    choices = [
        valid[: rng.randrange(1, len(valid) - 1)],  # truncated
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))),  # noise
        valid.replace(b'"hi"', b'"\xff\xfe\xc3"'),  # invalid UTF-8 inside a string
        b"\xef\xbb\xbf" + valid[:-1],  # BOM and no closing brace
        valid.replace(b"0}", b"NaN}").replace(b"3,", b"Infinity,"),
        b"", b"null", b"[]", b'"just a string"', b"123", b"{,}", b"{'model': 'fin'}",
        _deep(rng.randrange(1_000, 50_000), rng),
        b'{"model": "fin", "messages": ' + _deep(rng.randrange(1_000, 5_000), rng) + b"}",
    ]
    path = rng.choice(["/v1/chat/completions", "/v1/completions", "/v1/adapters"])
    return "POST", path, {**AUTH, "Content-Type": "application/json"}, rng.choice(choices)


def _wrong_types(rng: random.Random) -> Request:
    body = _valid_chat()
    for field in rng.sample(sorted(WRONG_FIELDS), rng.randrange(1, 3)):
        body[field] = rng.choice(WRONG_FIELDS[field])
    if rng.random() < 0.3:  # the same through /v1/completions
        body.pop("messages")
        body["prompt"] = rng.choice([["a", "b"], [], 5, {"p": 1}, [1], "\ud800", ["x\udc00"]])
        return "POST", "/v1/completions", AUTH, _json(body)
    return "POST", "/v1/chat/completions", AUTH, _json(body)


def _huge_bodies(rng: random.Random) -> Request:
    big = "x" * (MAX_BODY + rng.randrange(1, 200_000))
    body = _json({**_valid_chat(), "messages": [{"role": "user", "content": big}]})
    if rng.random() < 0.5:
        return "POST", "/v1/chat/completions", AUTH, body
    pieces = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    return "POST", "/v1/chat/completions", AUTH, iter(pieces)  # chunked: no Content-Length


def _auth(rng: random.Random) -> Request:
    headers = rng.choice([{}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer"},
                          {"Authorization": KEY}, {"X-Api-Key": "nope"}, {"Authorization": "Basic Zm9vOmJhcg=="},
                          {"Authorization": "Bearer " + KEY + "x"},
                          {"Authorization": "Bearer \u00e9\u00e8".encode("latin-1")}])
    method, path = rng.choice([("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                               ("POST", "/v1/adapters"), ("DELETE", "/v1/adapters/fin")])
    body = _json(_valid_chat()) if method == "POST" else None
    return method, path, headers, body


def _adapters(server: SimpleNamespace) -> Callable[[random.Random], Request]:
    def make(rng: random.Random) -> Request:
        path = rng.choice([
            "/", "/etc", "/etc/passwd", str(server.outside), str(server.runs / "escape"),
            str(server.runs / ".." / "outside"), str(server.runs / "missing"), "runs/fin1", "~",
            "a\u0000b", "x" * 5000, str(server.runs / "\ud800"), str(server.runs) + "/../" * 20 + "etc",
            str(server.runs / "fin1" / "adapter" / "adapter_config.json"),
        ])
        name = rng.choice(["fin", "new1", "base", "__base__", "a.b", "", "x" * 100, "../x", 5])
        if rng.random() < 0.3:
            target = rng.choice(["base", "nope", "__base__", "%2e%2e", "fin%00", "x" * 300])
            return "DELETE", f"/v1/adapters/{target}", AUTH, None
        return "POST", "/v1/adapters", AUTH, _json({"name": name, "path": path})
    return make


def _routes(rng: random.Random) -> Request:
    method, path = rng.choice([("GET", "/v1/chat/completions"), ("PUT", "/v1/models"), ("POST", "/v1/embeddings"),
                               ("PATCH", "/v1/adapters/fin"), ("GET", "/v1/models/nope"), ("POST", "/health/../v1"),
                               ("GET", "/v1/models/%ff%fe")])
    return method, path, AUTH, _json({"model": "fin"})


def _send(url: str, request: Request) -> httpx.Response:
    method, path, headers, content = request
    if content is not None:
        headers = {"Content-Type": "application/json", **headers}
    return httpx.request(method, url + path, headers=headers, content=content, timeout=60)


def _wrong_content_type(rng: random.Random) -> Request:
    kind = rng.choice(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""])
    return "POST", "/v1/chat/completions", {**AUTH, "Content-Type": kind}, _json(_valid_chat())


def _check_error(response: httpx.Response, request: Request) -> int:
    where = f"{request[0]} {request[1]} -> {response.status_code}: {response.text[:300]}"
    assert 400 <= response.status_code < 500, where
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["type"], where
    return response.status_code


def _leave_mid_stream(server: SimpleNamespace, rng: random.Random) -> None:
    """Clients that go away: after a streamed chunk or two, halfway through a body, or at once."""
    how = rng.choice(["stream", "partial_body", "connect_only"])
    if how == "stream":
        body = {**_valid_chat(), "max_tokens": 200, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
            assert r.status_code == 200
            for _, _line in zip(range(rng.randrange(1, 4)), r.iter_lines()):
                pass
        return
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        if how == "partial_body":
            body = _json(_valid_chat())
            raw.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                        + body[: len(body) // 2])


def _good_request_succeeds(server: SimpleNamespace) -> None:
    response = httpx.post(f"{server.url}/v1/chat/completions", json=_valid_chat(), headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("length", "stop")
    assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"


def test_hostile_requests_get_4xx_and_the_server_carries_on(server):
    rng = random.Random(SEED)
    makers = [_malformed_json, _wrong_types, _huge_bodies, _auth, _adapters(server), _routes, _wrong_content_type]
    deadline = time.monotonic() + BUDGET_S
    statuses: collections.Counter[int] = collections.Counter()
    for _ in range(10):
        if time.monotonic() > deadline:
            break
        for _ in range(PER_BURST):
            request = rng.choice(makers)(rng)
            statuses[_check_error(_send(server.url, request), request)] += 1
            if rng.random() < 0.05:
                _leave_mid_stream(server, rng)
        _good_request_succeeds(server)
    print(f"fuzz: {sum(statuses.values())} hostile requests, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= 2 * PER_BURST  # the time cap still leaves a real fuzz run
    assert {400, 401, 403, 404, 413} <= set(statuses)  # each kind of refusal was reached
    assert [m["id"] for m in httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["data"]] == ["base", "fin"]
    assert not os.path.exists(server.runs / "new1")  # nothing was written or loaded from outside


def test_adapter_loading_is_confined_to_the_roots(server):
    def load(name: str, path: str | Path) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/adapters", json={"name": name, "path": str(path)}, headers=AUTH, timeout=60)

    outside, escape = load("out", server.outside), load("out", server.runs / "escape")
    assert outside.status_code == escape.status_code == 403
    error = outside.json()["error"]
    assert error["code"] == "adapter_path_forbidden" and str(server.runs.resolve()) in error["message"]
    missing = load("gone", server.runs / "missing")
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "path"
    inside = load("fin2", server.runs / "fin1")  # a real adapter under the root loads
    assert inside.status_code == 201
    assert httpx.delete(f"{server.url}/v1/adapters/fin2", headers=AUTH).status_code == 200


def test_loading_over_http_is_off_without_roots(tiny_llama_dir: Path, tmp_path: Path):
    run = make_adapter_run(tiny_llama_dir, tmp_path / "fin1", task="finance-alpaca", seed=2)
    app = create_app(open_registry(str(tiny_llama_dir), []), ServeSettings())
    with BackgroundServer(app) as running:
        response = httpx.post(f"{running.url}/v1/adapters", json={"name": "fin", "path": str(run)}, timeout=60)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "adapter_loading_disabled"
    assert "--adapter-root" in response.json()["error"]["message"]
