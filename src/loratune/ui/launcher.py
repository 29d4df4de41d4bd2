"""Trainings started from the ui: validate a YAML config the way `loratune run` does, then run
`python -m loratune run CONFIG` in a subprocess, one at a time, the rest queued.

A subprocess rather than a thread: training takes every core and minutes to hours, and a process
of its own writes the same files, status and log as one started in a terminal (the ui reads both
the same way), and can be stopped by the stop file, or by Ctrl-C, without taking the ui down.

Nothing a launch writes leaves runs_dir: the config's `output_dir` is forced to runs_dir, the
resolved config is saved to `<runs_dir>/.ui/configs/<name>.yaml`, the console output goes to
`<runs_dir>/.ui/logs/<name>.log`.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loratune.config import RunConfig, apply_overrides, config_from_dict, parse_yaml, save_config
from loratune.errors import ConfigError, LoratuneError, RequestError, RunDirError
from loratune.run_dir import check_run_dir
from loratune.run_status import read_status, request_stop, run_state
from loratune.ui.paths import console_log, run_path, saved_config

SOURCE = "config"
"""How validation messages name the YAML a request sent."""
MAX_OVERRIDES = 200


def _key_in(message: str) -> str | None:
    """The config key a ConfigError message names (`SOURCE: train.lr: must be positive`,
    `SOURCE: unknown key 'lora.rank' (...)`), or "set" for a malformed override."""
    if message.startswith("--set "):
        return "set"
    rest = re.sub(r"^config( \(with --set overrides\))?: ", "", message)
    found = re.match(r"unknown key '([^']+)'", rest) or re.match(r"([A-Za-z_][\w.]*(?:\[\d+\])*): ", rest)
    return found.group(1) if found else None


def config_error(exc: ConfigError) -> RequestError:
    """The CLI's ConfigError as a 400 whose `param` is the key it names."""
    return RequestError(400, str(exc), param=_key_in(str(exc)), code="invalid_config")


def _parse_yaml(text: str) -> dict[str, Any]:
    """The YAML a request sent as a mapping, with read_yaml's messages (line of a syntax error)."""
    try:
        # An alias repeats a node by reference; nested ones expand a small text into billions of
        # values when the config is walked. Run configs never need them.
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise ConfigError(f"{SOURCE}: YAML aliases (*name) are not accepted here; write the values out")
    except yaml.YAMLError:
        pass  # parse_yaml reports it, with its line
    return parse_yaml(text, SOURCE)


def validate_config(text: str, overrides: list[str], runs_dir: Path) -> RunConfig:
    """The run config `loratune run` would build from `text` and `--set` overrides, with output_dir
    forced to runs_dir; a 400 with the CLI's message and the key at fault otherwise."""
    if len(overrides) > MAX_OVERRIDES:
        raise RequestError(400, f"at most {MAX_OVERRIDES} --set lines", param="set")
    try:
        values = apply_overrides(_parse_yaml(text), list(overrides))
        values["output_dir"] = str(runs_dir.resolve())  # the subprocess may run in another folder
        source = SOURCE + (" (with --set overrides)" if overrides else "")
        cfg = config_from_dict(values, source)
    except ConfigError as exc:
        raise config_error(exc) from None
    except RecursionError:  # YAML aliases can nest deeper than the stack
        raise RequestError(400, f"{SOURCE}: nested too deeply", param=None) from None
    run_path(runs_dir, cfg.name)  # a plain name, and not a link out of runs_dir
    return cfg


@dataclass
class Launch:
    """One `loratune run` the ui was asked for: queued, running, or ended."""

    name: str
    config: Path
    flags: list[str]
    process: subprocess.Popen | None = None
    returncode: int | None = None
    error: str | None = None
    stop_sent: bool = False
    """The ui sent it Ctrl-C (it was still loading, or evaluating)."""


class Launcher:
    """A FIFO of launches, run one at a time by a worker thread."""

    def __init__(self, runs_dir: Path, *, cwd: Path | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.cwd = cwd
        self._queue: collections.deque[Launch] = collections.deque()
        self._running: Launch | None = None
        self._ended: dict[str, Launch] = {}
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ asking

    def submit(self, text: str, overrides: list[str], *, resume: bool = False,
               overwrite: bool = False) -> tuple[str, int]:
        """Validate, save the config, queue the run; (name, trainings ahead of it)."""
        if resume and overwrite:
            raise RequestError(400, "resume continues a run and overwrite replaces it: choose one", param="overwrite")
        cfg = validate_config(text, overrides, self.runs_dir)
        run_dir = run_path(self.runs_dir, cfg.name)
        with self._cond:
            if cfg.name in self.active_names():
                raise RequestError(409, f"run {cfg.name!r} is already queued or running", param="name",
                                   code="run_queued")
            self._check_dir(run_dir, resume=resume, overwrite=overwrite)
            path = saved_config(self.runs_dir, cfg.name)
            save_config(cfg, path)
            flags = ["--resume"] * resume + ["--overwrite"] * overwrite
            self._queue.append(Launch(cfg.name, path, flags))
            position = len(self._queue) - 1 + (self._running is not None)
            self._ended.pop(cfg.name, None)
            self._start_worker()
            self._cond.notify_all()
        return cfg.name, position

    def _check_dir(self, run_dir: Path, *, resume: bool, overwrite: bool) -> None:
        state = run_state(run_dir).state if run_dir.is_dir() else None
        if state in ("training", "evaluating"):
            raise RequestError(409, f"run {run_dir.name!r} is {state} in another process", param="name",
                               code="run_busy")
        try:
            check_run_dir(run_dir, resume=resume, overwrite=overwrite)
        except RunDirError as exc:
            raise RequestError(409, str(exc), param="name", code="run_exists") from None

    def stop(self, name: str) -> str:
        """Stop a run: "removed" for a queued one, "stopping" for a training one (it ends at the next
        step with a checkpoint); a 409 when there is nothing to stop."""
        run_dir = run_path(self.runs_dir, name)
        with self._cond:
            for launch in self._queue:
                if launch.name == name:
                    self._queue.remove(launch)
                    return "removed"
            running = self._running
            if running is not None and running.name == name and running.process is not None:
                if (self._own_status(running) or {}).get("state") == "training":
                    request_stop(run_dir)
                else:  # still starting, or evaluating: Ctrl-C, which the run records as interrupted
                    running.stop_sent = True
                    running.process.send_signal(signal.SIGINT)
                return "stopping"
        state = run_state(run_dir) if run_dir.is_dir() else None
        if state is not None and state.state == "training":
            request_stop(run_dir)
            return "stopping"
        shown = state.state if state else "not started"
        raise RequestError(409, f"run {name!r} is {shown}; only a queued or training run can be stopped"
                           + (" from the ui (stop an evaluation with Ctrl-C where it runs)" if shown == "evaluating"
                              else ""), param="name", code="not_running")

    # ------------------------------------------------------------ reading

    def active_names(self) -> list[str]:
        running = [self._running.name] if self._running else []
        return running + [launch.name for launch in self._queue]

    def snapshot(self) -> dict[str, Any]:
        """`{"running": name | None, "queued": [names]}`."""
        with self._cond:
            return {"running": self._running.name if self._running else None,
                    "queued": [launch.name for launch in self._queue]}

    def saved_config_text(self, name: str) -> str | None:
        path = saved_config(self.runs_dir, name)
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def overlay(self) -> dict[str, tuple[str, str | None]]:
        """State and message of the runs whose files do not tell yet (`runs.Overlay`): queued ones,
        the running one until its process writes status.json, launches that ended before it did."""
        with self._cond:
            queued = list(self._queue)
            running = self._running
            ended = list(self._ended.values())
        out: dict[str, tuple[str, str | None]] = {}
        for ahead, launch in enumerate(queued, start=1 if running else 0):
            out[launch.name] = ("queued", f"{ahead} training(s) ahead of it" if ahead else "starting next")
        if running is not None and running.process is not None and self._own_status(running) is None:
            out[running.name] = ("training", f"starting: `loratune run` (pid {running.process.pid}) is loading")
        for launch in ended:
            if self._own_status(launch) is None:
                out[launch.name] = self._ended_state(launch)
        return out

    def _own_status(self, launch: Launch) -> dict[str, Any] | None:
        """The run's status.json when the launch's own process wrote it, else None (not yet, or a
        status left by an earlier process, or a damaged file)."""
        try:
            status = read_status(self.runs_dir / launch.name)
        except LoratuneError:
            return None
        own = bool(status) and launch.process is not None and status.get("pid") == launch.process.pid
        return status if own else None

    def _ended_state(self, launch: Launch) -> tuple[str, str]:
        log = console_log(self.runs_dir, launch.name)
        if launch.error:
            return "failed", launch.error
        if launch.stop_sent or launch.returncode in (130, -signal.SIGINT):
            return "interrupted", f"stopped before training started; see {log}"
        return "failed", f"`loratune run` exited with code {launch.returncode} before training started; see {log}"

    # ------------------------------------------------------------ running

    def _start_worker(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="loratune-ui-launcher", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                launch = self._queue.popleft()
                self._running = launch
                try:
                    launch.process = self._spawn(launch)
                except OSError as exc:  # no python, no disk space for the log
                    launch.error = f"could not start `loratune run`: {exc}"
                    self._finish(launch, 127)
                    continue
            returncode = launch.process.wait()
            with self._cond:
                self._finish(launch, returncode)

    def _finish(self, launch: Launch, returncode: int) -> None:
        launch.returncode = returncode
        self._ended[launch.name] = launch
        self._running = None

    def command(self, launch: Launch) -> list[str]:
        return [sys.executable, "-m", "loratune", "run", str(launch.config), *launch.flags]

    def _spawn(self, launch: Launch) -> subprocess.Popen:
        log = console_log(self.runs_dir, launch.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        command = self.command(launch)
        with log.open("a", encoding="utf-8") as out:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the console log follows the run line by line
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.cwd, env=env)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or running (tests, shutdown); whether that happened in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._cond:
                if not self._queue and self._running is None:
                    return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        """Drop the queue and stop the worker. A training already running goes on: its own process
        writes its files, and the next ui shows it."""
        with self._cond:
            self._closing = True
            self._queue.clear()
            self._cond.notify_all()
