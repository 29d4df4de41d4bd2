"""What a run is doing now, for anyone watching it from another process (`loratune stop`, the ui).

The process that trains or evaluates writes `runs/<name>/status.json` (atomically, so a reader
sees the old or the new file):

```
{"state": "training" | "evaluating" | "finished" | "failed" | "interrupted" | "trained",
 "pid": 1234, "updated": "2026-12-08T00:31:02Z", "message": str | null,
 "step": int | null, "max_steps": int | null, "elapsed_s": float | null, "eta_s": float | null,
 "tokens_per_s": float | null}
```

A process killed outright (SIGKILL, a power cut) cannot write its last state, so readers take the
state through `run_state`, which checks that the writing process is still alive. A stop is asked for
with a file (`stop.request`) that the training polls at each step: it needs no signal, so it works
across users, containers and the ui's subprocesses alike.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from loratune.errors import DataError, LoratuneError, TrainingStopped
from loratune.json_files import read_json_or_none, write_json
from loratune.run_dir import (
    CONFIG,
    LOG,
    METRICS,
    STATUS,
    STOP,
    has_adapter,
    has_checkpoint,
)

__all__ = ["LOG", "STATUS", "STOP", "RunState", "append_log", "clear_stop", "phase", "read_status", "request_stop",
           "resume_command", "run_state", "stop_requested", "write_status"]

STATES = ("training", "evaluating", "finished", "failed", "interrupted", "trained")
ACTIVE = ("training", "evaluating")
PROGRESS = ("step", "max_steps", "elapsed_s", "eta_s", "tokens_per_s")
"""Fields that a new status keeps from the previous one unless given."""


@dataclass
class RunState:
    """The state of a run as a reader should show it, with the status.json it was read from (None when
    the run has none)."""

    state: str
    message: str | None
    status: dict[str, Any] | None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_status(run_dir: str | Path, state: str, **fields: Any) -> None:
    """Replace `status.json` with `state`, this process's pid and the time; `message` and the progress
    fields (step, max_steps, elapsed_s, eta_s, tokens_per_s) as given, the progress fields of the
    previous status kept where not given."""
    if state not in STATES:
        raise ValueError(f"status state {state!r}: expected one of {', '.join(STATES)}")
    unknown = sorted(set(fields) - set(PROGRESS) - {"message"})
    if unknown:
        raise ValueError(f"status field {unknown[0]!r}: expected message or one of {', '.join(PROGRESS)}")
    path = Path(run_dir) / STATUS
    try:
        previous = read_status(run_dir) or {}
    except DataError:
        previous = {}  # a damaged status is replaced, not kept
    status = {"state": state, "pid": os.getpid(), "updated": _now(), "message": fields.get("message")}
    status.update({key: fields.get(key, previous.get(key)) for key in PROGRESS})
    write_json(path, status)


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's status.json, or None when it has none; DataError naming the file when it is not a
    JSON object."""
    path = Path(run_dir) / STATUS
    status = read_json_or_none(path)
    if status is not None and not isinstance(status, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(status).__name__}")
    return status


def _process_alive(pid: Any) -> bool:
    """Whether process `pid` runs on this machine. A zombie (ended, not yet reaped by its parent) counts
    as ended: a ui that started the run holds its zombie until it polls it."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal check is all there is
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def resume_command(run_dir: str | Path) -> str:
    """The command that continues a run from its last checkpoint, with the resolved config it saved."""
    return f"`loratune run {Path(run_dir) / CONFIG} --resume`"


def _ended_early(run_dir: Path, status: dict[str, Any]) -> RunState:
    """The state of a run whose training or evaluation process ended without writing its last state."""
    pid = status.get("pid")
    if status["state"] == "evaluating" and has_adapter(run_dir):
        return RunState("interrupted", f"the evaluation (pid {pid}) ended without finishing; "
                        f"evaluate again with `loratune eval {run_dir}`", status)
    if has_checkpoint(run_dir):
        return RunState("interrupted", f"the training (pid {pid}) ended without finishing; "
                        f"continue with {resume_command(run_dir)}", status)
    return RunState("failed", f"the training (pid {pid}) ended without finishing, before its first checkpoint",
                    status)


def _state_from_files(run_dir: Path) -> RunState:
    """The state of a run that has no status.json (written by an older loratune), read off its files."""
    if (run_dir / METRICS).is_file():
        return RunState("finished", None, None)
    if has_adapter(run_dir):
        return RunState("trained", "trained, not evaluated", None)
    if has_checkpoint(run_dir):
        return RunState("interrupted", f"no adapter yet; continue with {resume_command(run_dir)}", None)
    return RunState("failed", f"{run_dir}: no {STATUS}, adapter or checkpoint: the training never got far", None)


def run_state(run_dir: str | Path) -> RunState:
    """The state of a run as a reader should show it: a training or evaluation whose process is gone is
    "interrupted" (it can continue) or "failed"; a run without status.json is judged by its files."""
    run_dir = Path(run_dir)
    try:
        status = read_status(run_dir)
    except DataError as exc:
        return RunState(_state_from_files(run_dir).state, str(exc), None)
    if status is None or status.get("state") not in STATES:
        return _state_from_files(run_dir)
    if status["state"] in ACTIVE and not _process_alive(status.get("pid")):
        return _ended_early(run_dir, status)
    if status["state"] == "training" and stop_requested(run_dir):
        return RunState("training", "stop requested: it stops with a checkpoint after the current step", status)
    return RunState(status["state"], status.get("message"), status)


# ---------------------------------------------------------------- stopping


def request_stop(run_dir: str | Path) -> None:
    """Ask the training in `run_dir` to stop at the end of its current step (with a checkpoint)."""
    (Path(run_dir) / STOP).write_text(f"stop requested {_now()} by pid {os.getpid()}\n", encoding="utf-8")


def stop_requested(run_dir: str | Path) -> bool:
    return (Path(run_dir) / STOP).is_file()


def clear_stop(run_dir: str | Path) -> None:
    (Path(run_dir) / STOP).unlink(missing_ok=True)


# ---------------------------------------------------------------- phases and the log


def _interrupted_message(run_dir: Path, state: str) -> str:
    if state == "evaluating":
        return f"interrupted during evaluation; evaluate again with `loratune eval {run_dir}`"
    if has_checkpoint(run_dir):
        return f"interrupted; continue from the last checkpoint with {resume_command(run_dir)}"
    return "interrupted before the first checkpoint; start it again"


def _failure_message(exc: BaseException) -> str:
    if isinstance(exc, LoratuneError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@contextlib.contextmanager
def phase(run_dir: str | Path, state: str) -> Iterator[None]:
    """Write `state` on entering; on the way out by an exception write what ended it: "interrupted" for
    Ctrl-C or a requested stop, "failed" (with the error) otherwise. On a normal exit nothing is
    written: the caller writes the next state."""
    run_dir = Path(run_dir)
    write_status(run_dir, state)
    try:
        yield
    except TrainingStopped as exc:
        write_status(run_dir, "interrupted", message=str(exc))
        raise
    except KeyboardInterrupt:
        write_status(run_dir, "interrupted", message=_interrupted_message(run_dir, state))
        raise
    except Exception as exc:
        write_status(run_dir, "failed", message=_failure_message(exc))
        raise


def append_log(run_dir: str | Path, message: str) -> None:
    """Append one logged message to the run's log.txt, so a reader in another process can follow it."""
    with (Path(run_dir) / LOG).open("a", encoding="utf-8") as out:
        out.write(message if message.endswith("\n") else message + "\n")
