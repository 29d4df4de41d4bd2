"""Chat with one run from the ui: the `loratune serve` app over the run's base model and adapter,
reachable under /api/chat/v1/... (the same OpenAI-compatible routes, streaming included).

One chat run at a time: a model takes memory and every core, so opening another run closes the
first before loading. A mounted app's lifespan does not run, so its decoding worker (the
Scheduler) is started and stopped here.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse

from loratune.errors import LoratuneError, RequestError
from loratune.run_dir import ADAPTER, has_adapter
from loratune.serve.app import create_app
from loratune.serve.registry import RESERVED_NAMES, open_registry
from loratune.serve.schemas import ADAPTER_NAME_PATTERN, error_body
from loratune.serve.settings import ServeSettings


def served_name(run_name: str) -> str:
    """The model name the run's adapter is served under: the run name where serve accepts it (no
    dots, at most 64 characters, not `base`), else the run name with those changed."""
    if re.fullmatch(ADAPTER_NAME_PATTERN, run_name) and run_name not in RESERVED_NAMES:
        return run_name
    name = re.sub(r"[^A-Za-z0-9_-]", "-", run_name)[:64]
    return f"{name[:59]}-run" if name in RESERVED_NAMES else name


class ChatHost:
    """The chat run the ui serves now, as an ASGI app to mount at /api/chat."""

    def __init__(self) -> None:
        self._app: Any = None
        self.run: str | None = None
        self._opened: tuple[Path, int] | None = None
        self._lock = threading.Lock()

    def open(self, run_dir: Path) -> list[str]:
        """Serve base + the adapter of `run_dir` (closing the run served before); the model names.
        The run served already is kept as it is, unless its adapter was written again since."""
        if not has_adapter(run_dir):
            raise RequestError(409, f"run {run_dir.name!r} has no adapter yet; chat once its training has ended",
                               param="run", code="no_adapter")
        opened = (run_dir, (run_dir / ADAPTER / "adapter_config.json").stat().st_mtime_ns)
        with self._lock:
            if self._app is not None and self._opened == opened:
                return self._app.state.registry.names()
            self.close()
            try:
                registry = open_registry(None, [f"{served_name(run_dir.name)}={run_dir}"])
            except LoratuneError as exc:  # base model not on this machine, adapter files damaged
                raise RequestError(409, f"cannot open run {run_dir.name!r} for chat: {exc}", param="run",
                                   code="chat_unavailable") from None
            app = create_app(registry, ServeSettings())  # the ui's guard checks the API key in front of it
            app.state.scheduler.start()
            self._app, self.run, self._opened = app, run_dir.name, opened
            return registry.names()

    def close(self) -> None:
        """Stop serving: waiting and running requests end with a 503."""
        app, self._app, self.run, self._opened = self._app, None, None, None
        if app is not None:
            app.state.scheduler.stop()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        app = self._app
        if scope["type"] != "http":
            return
        if app is None:
            body = error_body(409, 'no run is open for chat; POST /api/chat/open {"run": NAME} first',
                              code="no_chat_open")
            await JSONResponse(body, status_code=409)(scope, receive, send)
            return
        await app(scope, receive, send)
