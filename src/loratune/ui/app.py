"""`loratune ui`: a local dashboard over runs_dir. The page (ui/static/) lists the runs, follows a
training live, starts and stops trainings, filters a run's answers, compares runs and chats with one.

Routes (JSON; docs/ui.md lists the fields):
  GET  /  and /static/{file}           the page
  GET  /api/runs                       a row per run, and the launch queue
  GET  /api/runs/{name}                one run: row + config, status, summary, metric tables
  GET  /api/runs/{name}/live           progress, curves and log tail of a running run
  POST /api/runs/{name}/stop           stop a training (checkpoint kept) or drop a queued run
  GET  /api/runs/{name}/answers        per-row answers and scores, filtered
  GET  /api/configs                    the shipped configs
  POST /api/validate, POST /api/runs   check a config; queue a `loratune run`
  GET  /api/compare?runs=a,b           the compare table and the runs' curves
  POST /api/chat/open, /api/chat/v1/*  chat with a run (the `loratune serve` routes)

Bad input gets a 4xx with `{"error": {"message", "param", ...}}`, the serve error body.
Without an API key the ui listens on the loopback only and answers only requests addressed to a
loopback name (a web page cannot reach it through DNS rebinding); with one, every /api request needs it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from loratune.errors import ConfigError, LoratuneError, RequestError, ServeError
from loratune.reporting.report import compare_runs
from loratune.serve.app import check_port
from loratune.serve.guard import RequestGuard, error_response, install_error_handlers, send_json
from loratune.serve.schemas import error_body
from loratune.serve.settings import ServeSettings
from loratune.ui import answers, runs
from loratune.ui.chat import ChatHost
from loratune.ui.launcher import Launcher, validate_config
from loratune.ui.paths import config_path, console_log, existing_run, list_config_paths, run_path

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_COMPARE = 20
MAX_LOG_LINES = 1000


class ConfigBody(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    yaml: str = Field(max_length=200_000)
    overrides: list[str] = Field(default_factory=list, alias="set")


class StartBody(ConfigBody):
    resume: bool = False
    overwrite: bool = False


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    run: str


def _host_name(header: str) -> str:
    """The host of a Host header without its port (`[::1]:7860` -> `::1`)."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class UiGuard:
    """ASGI middleware: the serve guard (API key, body size) on /api, the page files open to all;
    without a key, requests addressed to a non-loopback host name are refused."""

    def __init__(self, app: Any, settings: ServeSettings) -> None:
        self.app = app
        self.api = RequestGuard(app, settings)
        self.loopback_only = not settings.api_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.loopback_only:
            host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
            if _host_name(host) not in LOOPBACK:
                await send_json(scope, send, 403, error_body(
                    403, "this ui answers requests to 127.0.0.1 or localhost only; start it with --api-key "
                         "to reach it by another name", code="host_not_allowed"))
                return
        guarded = scope["path"] == "/api" or scope["path"].startswith("/api/")
        await (self.api if guarded else self.app)(scope, receive, send)


def _page_file(name: str) -> FileResponse:
    files = {p.name: p for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else {}
    if name not in files:
        raise RequestError(404, f"no page file {name[:100]!r}", code="unknown_url")
    return FileResponse(files[name], headers={"Cache-Control": "no-cache"})


def create_ui_app(runs_dir: str | Path = "runs", configs_dir: str | Path = "configs", api_key: str | None = None,
                  *, launcher: Launcher | None = None) -> FastAPI:
    """The ui's FastAPI app over `runs_dir`; `launcher` defaults to one running `loratune run` in
    the current directory."""
    runs_dir, configs_dir = Path(runs_dir), Path(configs_dir)
    launcher = launcher or Launcher(runs_dir)
    chat = ChatHost()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        chat.close()
        launcher.close()

    app = FastAPI(title="loratune ui", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.router.redirect_slashes = False  # `/api/runs/` is no route, not a redirect to the list
    app.state.launcher, app.state.chat, app.state.runs_dir = launcher, chat, runs_dir
    install_error_handlers(app)
    _query_errors(app)

    @app.exception_handler(LoratuneError)
    async def on_loratune_error(request: Request, exc: LoratuneError) -> JSONResponse:
        # A run's own files in a state this request cannot use (a damaged metrics.json): the request was fine.
        return error_response(400 if isinstance(exc, ConfigError) else 409, str(exc))

    app.add_middleware(UiGuard, settings=ServeSettings(api_key=api_key or None))
    _page_routes(app)
    _run_routes(app, runs_dir, launcher)
    _launch_routes(app, runs_dir, configs_dir, launcher)
    _chat_routes(app, runs_dir, chat)
    return app


def _query_errors(app: FastAPI) -> None:
    """Bad query or path parameters name the parameter; body errors keep the serve handler's words."""
    body_handler = app.exception_handlers[RequestValidationError]

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = exc.errors()[0]
        loc = [str(part) for part in error.get("loc", ())]
        if not loc or loc[0] not in ("query", "path"):
            return await body_handler(request, exc)
        name = loc[1] if len(loc) > 1 else None
        if error.get("type") == "missing":
            return error_response(400, f"missing {loc[0]} parameter '{name}'", param=name)
        return error_response(400, f"invalid value for '{name}': {error.get('msg', 'invalid value')}", param=name)


def _page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return _page_file("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        return _page_file(name)


def _run_routes(app: FastAPI, runs_dir: Path, launcher: Launcher) -> None:
    def run_dir_of(name: str) -> Path:
        """The run's folder: an existing run, or one the launcher knows (queued, or failed early)."""
        overlay = launcher.overlay()
        return run_path(runs_dir, name) if name in overlay else existing_run(runs_dir, name)

    @app.get("/api/runs")
    def list_runs() -> dict[str, Any]:
        return {"runs": runs.list_runs(runs_dir, launcher.overlay()), "queue": launcher.snapshot()}

    @app.get("/api/runs/{name}")
    def one_run(name: str) -> dict[str, Any]:
        run_dir = run_dir_of(name)
        return runs.run_detail(run_dir, launcher.overlay(), launcher.saved_config_text(name))

    @app.get("/api/runs/{name}/live")
    def live(name: str, log_lines: int = 50) -> dict[str, Any]:
        if not 0 <= log_lines <= MAX_LOG_LINES:
            raise RequestError(400, f"log_lines must be between 0 and {MAX_LOG_LINES}", param="log_lines")
        run_dir = run_dir_of(name)
        return runs.live(run_dir, log_lines, console_log(runs_dir, name), launcher.overlay())

    @app.post("/api/runs/{name}/stop", status_code=202)
    def stop(name: str) -> dict[str, str]:
        return {"state": launcher.stop(name)}

    @app.get("/api/runs/{name}/answers")
    def run_answers(name: str, how: str = Query("all", alias="filter"), metric: str | None = None,
                    sort: str = "none", offset: int = 0, limit: int = 100) -> dict[str, Any]:
        return answers.answers_page(existing_run(runs_dir, name), how=how, metric=metric or None, sort=sort,
                                    offset=offset, limit=limit)

    @app.get("/api/compare")
    def compare(names: str = Query(..., alias="runs")) -> dict[str, Any]:
        picked = list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
        if not picked or len(picked) > MAX_COMPARE:
            raise RequestError(400, f"runs: give 1 to {MAX_COMPARE} run names, comma-separated", param="runs")
        paths = [existing_run(runs_dir, name, param="runs") for name in picked]
        return {"table": compare_runs(paths), "curves": {p.name: runs.curves(p) for p in paths}}


def _launch_routes(app: FastAPI, runs_dir: Path, configs_dir: Path, launcher: Launcher) -> None:
    @app.get("/api/configs")
    def configs() -> dict[str, Any]:
        found = []
        for relative in list_config_paths(configs_dir):
            text = config_path(configs_dir, relative).read_text(encoding="utf-8", errors="replace")
            found.append({"path": relative, "text": text})
        return {"configs": found}

    @app.post("/api/validate")
    def validate(body: ConfigBody) -> dict[str, Any]:
        cfg = validate_config(body.yaml, body.overrides, runs_dir)
        return {"ok": True, "name": cfg.name}

    @app.post("/api/runs", status_code=202)
    def start(body: StartBody) -> dict[str, Any]:
        name, position = launcher.submit(body.yaml, body.overrides, resume=body.resume, overwrite=body.overwrite)
        return {"name": name, "position": position}


def _chat_routes(app: FastAPI, runs_dir: Path, chat: ChatHost) -> None:
    @app.post("/api/chat/open")
    def open_chat(body: ChatBody) -> dict[str, Any]:
        return {"models": chat.open(existing_run(runs_dir, body.run, param="run"))}

    app.mount("/api/chat", chat)  # after /api/chat/open, which must match first


def run_ui(runs_dir: str | Path = "runs", host: str = "127.0.0.1", port: int = 7860, api_key: str | None = None,
           configs_dir: str | Path = "configs") -> None:
    """`loratune ui`: serve the dashboard until Ctrl-C (which also reaches a training it started)."""
    if host not in LOOPBACK and not api_key:
        raise ServeError(f"--host {host}: the ui starts trainings and reads every run; on a host other than "
                         "127.0.0.1 it needs --api-key KEY (or LORATUNE_API_KEY)")
    runs_dir = Path(runs_dir)
    if runs_dir.exists() and not runs_dir.is_dir():
        raise ServeError(f"--runs-dir {runs_dir}: not a folder")
    check_port(host, port)
    app = create_ui_app(runs_dir, configs_dir, api_key)
    shown = "[::1]" if host == "::1" else host
    print(f"loratune ui: http://{shown}:{port}/  (runs: {runs_dir}, configs: {configs_dir})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
