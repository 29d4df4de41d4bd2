"""The ui survives hostile clients: a seeded fuzz of hostile run names, paths, query values, bodies and
headers. Every answer is a 4xx with an error body (never a 5xx), nothing outside runs_dir and the
configs folder is read back or written (a sentinel file outside, reachable by symlinks from both,
keeps its content and mtime and never appears in a response), and a good request works after."""

from __future__ import annotations

import collections
import json
import random
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from ui_helpers import make_run

from loratune.ui.app import create_ui_app
from loratune.ui.launcher import Launch, Launcher

SEED = 20261208
KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
REQUESTS = 600
SECRET = "sentinel-secret-7f3a"

HOSTILE_NAMES = ["..", ".", "../..", "../outside", "escape", "..%2f..", "a/../../b", "/etc/passwd", "a\x00b", "%00",
                 ".ui", "-rf", "x" * 101, "名前", "a b", "a;b", "a|b", "$(id)", "`id`", "\ud800", "a\nb", "con:",
                 "sql1/../../outside", "%2e%2e", "~", "~root", "C:\\x", "escape/secret.yaml", "missing-run"]
HOSTILE_CONFIG_PATHS = ["../outside/secret.yaml", "/etc/passwd", "leak.yaml", "..", "a\x00.yaml", "x.txt"]
JUNK = ["", "-1", "1e999", "NaN", "x" * 5000, "\x00", "../", "%", "[]", "{}", "true", "-9999999999999999999999"]
NOT_STRINGS = [1, 2.5, None, [], {}, True, ["x", 1]]


class QuickLauncher(Launcher):
    def command(self, launch: Launch) -> list[str]:
        return [sys.executable, "-c", "pass"]


@pytest.fixture
def world(tmp_path):
    runs, configs, outside = tmp_path / "runs", tmp_path / "configs", tmp_path / "outside"
    make_run(runs, "sql1", rows=6)
    configs.mkdir()
    (configs / "demo.yaml").write_text("name: demo\n")
    outside.mkdir()
    sentinel = outside / "secret.yaml"
    sentinel.write_text(f"name: {SECRET}\n")
    make_run(outside, "victim", rows=2)  # a whole run outside, reachable only by the link below
    (runs / "escape").symlink_to(outside / "victim")
    (configs / "leak.yaml").symlink_to(sentinel)
    return runs, configs, outside, sentinel


def _segment(name: str) -> str:
    # Dots encoded too: a client would drop a bare `.` or `..` segment before sending it.
    return quote(name.encode("utf-8", "surrogatepass"), safe="").replace(".", "%2E")


def _run_paths(rng: random.Random) -> tuple[str, str, dict, dict | None]:
    name = _segment(rng.choice(HOSTILE_NAMES))
    method, tail = rng.choice([("GET", ""), ("GET", "/live"), ("GET", "/answers"), ("POST", "/stop")])
    return method, f"/api/runs/{name}{tail}", {}, None


def _queries(rng: random.Random) -> tuple[str, str, dict, dict | None]:
    path, params = rng.choice([
        ("/api/runs/sql1/answers", {rng.choice(["filter", "metric", "sort", "offset", "limit"]): rng.choice(JUNK)}),
        ("/api/runs/sql1/live", {"log_lines": rng.choice(JUNK)}),
        ("/api/compare", {"runs": ",".join(rng.choice(HOSTILE_NAMES) for _ in range(rng.randint(1, 25)))}),
    ])
    if path.endswith("answers") and params.get("metric") == "":
        params["metric"] = "bleu"  # an empty metric means the default, which is valid
    return "GET", path, params, None


def _bodies(rng: random.Random) -> tuple[str, str, dict, dict | None]:
    path = rng.choice(["/api/validate", "/api/runs", "/api/chat/open"])
    bad = rng.choice([
        {"yaml": rng.choice(NOT_STRINGS)},
        {"yaml": "name: ok\n", "set": rng.choice([5, "train.lr=1", [1], [None], ["oops"], ["name=../x"],
                                                  ["output_dir"], ["name=" + rng.choice(HOSTILE_NAMES[:12])]])},
        {"yaml": rng.choice(["name: [", "- a", "name: " + rng.choice(HOSTILE_NAMES[:8]),
                             "a: &x [1]\nb: [*x, *x]\nname: z\n", "lora: {r: -1}\nname: z\n", "[" * 3000,
                             "name: x\nmodel: " + "y" * 10 + "\ntrain: {lr: 0}\n"])},
        {"yaml": "name: demo\n", "resume": rng.choice(["yes", 2, [], None]), "overwrite": True},
        {"yaml": "name: demo\n", "resume": True, "overwrite": True},
        {"run": rng.choice(HOSTILE_NAMES + NOT_STRINGS)},
        {},
    ])
    if path == "/api/validate" and "resume" in bad:  # validation ignores resume and overwrite
        path = "/api/runs"
    if path == "/api/chat/open" and "run" not in bad:
        bad = {"run": rng.choice(HOSTILE_NAMES)}
    return "POST", path, {}, bad


def _raw(rng: random.Random) -> tuple[str, str, dict, bytes | str]:
    path = rng.choice(["/api/validate", "/api/runs", "/api/chat/open", "/api/runs/sql1/stop"])
    body = rng.choice([b"{", b"[1,2]", b"null", b'"text"', b"\xff\xfe", b"{" * 10000, b"x" * 1_100_000,
                       json.dumps({"yaml": "name: " + "x" * 300_000}).encode()])
    return "RAW", path, {}, body


def _routes(rng: random.Random) -> tuple[str, str, dict, None]:
    method, path = rng.choice([
        ("GET", f"/static/{_segment(rng.choice(HOSTILE_NAMES))}"), ("GET", "/static/..%2fapp.py"),
        ("DELETE", "/api/runs/sql1"), ("PUT", "/api/runs"), ("GET", "/api/nothing"), ("GET", "/api/chat/v1/models"),
        ("POST", "/api/chat/v1/chat/completions"), ("GET", "/api/configs/..%2f..%2fsecret.yaml"),
        ("GET", f"/api/configs/{_segment(rng.choice(HOSTILE_CONFIG_PATHS))}"),
    ])
    return method, path, {}, None


def _send(client: TestClient, rng: random.Random, request: tuple) -> object:
    method, path, params, body = request
    headers = dict(AUTH)
    roll = rng.random()
    if roll < 0.1:
        headers = rng.choice([{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + KEY},
                              {"Authorization": "Bearer " + KEY + "x"}, {"X-Api-Key": "nope"}])
    if method == "RAW":
        headers["content-type"] = rng.choice(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                              "application/json; charset=latin-1"])
        return client.post(path, content=body, headers=headers)
    if method == "POST" and body is not None:  # JSON escapes lone surrogates, which the server must refuse
        return client.post(path, content=json.dumps(body).encode(), headers={**headers,
                                                                             "content-type": "application/json"})
    query = "&".join(f"{key}={_segment(value)}" for key, value in params.items())  # lone surrogates too
    return client.request(method, f"{path}?{query}" if query else path, headers=headers)


def _tree(root: Path, skip: tuple[Path, ...]) -> dict[str, int]:
    return {str(p): p.lstat().st_mtime_ns for p in root.rglob("*")
            if not any(p == s or p.is_relative_to(s) for s in skip)}


def test_hostile_requests_get_4xx_and_nothing_outside_is_touched(world):
    runs, configs, _, sentinel = world
    before = _tree(runs.parent, (runs / ".ui",))
    sentinel_mtime = sentinel.stat().st_mtime_ns
    rng = random.Random(SEED)
    makers = [_run_paths, _queries, _bodies, _raw, _routes]
    statuses: collections.Counter[int] = collections.Counter()
    app = create_ui_app(runs, configs, api_key=KEY, launcher=QuickLauncher(runs))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for _ in range(REQUESTS):
            request = rng.choice(makers)(rng)
            response = _send(client, rng, request)
            assert 400 <= response.status_code < 500, (request[:3], response.status_code, response.text[:300])
            assert isinstance(response.json()["error"]["message"], str)
            assert SECRET not in response.text and "victim" not in response.text
            statuses[response.status_code] += 1
        assert client.get("/api/runs", headers=AUTH).json()["runs"][0]["name"] == "sql1"
        assert client.get("/api/runs/sql1/answers", headers=AUTH).json()["total"] == 6
        names = [c["path"] for c in client.get("/api/configs", headers=AUTH).json()["configs"]]
        assert names == ["demo.yaml"]  # the link out of the folder is not offered
    print(f"ui fuzz: {sum(statuses.values())} hostile requests, statuses {dict(sorted(statuses.items()))}")
    assert {400, 401, 404, 409, 413} <= set(statuses)
    assert sentinel.read_text() == f"name: {SECRET}\n" and sentinel.stat().st_mtime_ns == sentinel_mtime
    assert _tree(runs.parent, (runs / ".ui",)) == before  # nothing written, outside .ui/, anywhere
