"""A run directory, in one place: the names of its files, whether it holds an earlier run, the lock
that keeps two trainings out of it, and reading it back for reports and comparisons.

```
runs/<name>/
  config.yaml         the resolved config, every key
  adapter/            the trained adapter + loratune.json (task, base model, lineage)
  checkpoints/        Trainer checkpoints (resume, accuracy against minutes)
  metrics.jsonl       train/eval loss logs, one JSON object per line
  data_stats.json     rows, token lengths, truncated and dropped counts
  run_summary.json    parameters, memory, wall time, tokens/s, eval loss start -> end
  predictions.jsonl   evaluation: base and LoRA answers per held-out row
  metrics.json/.md    evaluation metrics and tables
  plots/ report.md report.html
  status.json         what the run is doing now: training, evaluating, finished, ... (`run_status.py`)
  log.txt             the lines training printed
  stop.request        present while a stop is asked for (`loratune stop`)
```
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from loratune.errors import DataError, RunDirError
from loratune.json_files import read_json_or_none, read_jsonl

CONFIG = "config.yaml"
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"
METRICS_LOG = "metrics.jsonl"
DATA_STATS = "data_stats.json"
SUMMARY = "run_summary.json"
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
LOCK = ".train.lock"
STATUS = "status.json"
STOP = "stop.request"
LOG = "log.txt"
RUN_FILES = (CONFIG, METRICS_LOG, SUMMARY, DATA_STATS, METRICS, PREDICTIONS)


def has_adapter(run_dir: Path) -> bool:
    return (run_dir / ADAPTER / "adapter_config.json").is_file()


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / CHECKPOINTS).glob("checkpoint-*/adapter_config.json"))


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Decide, without writing anything, whether training may start in `run_dir`.

    Only an adapter or a checkpoint makes a directory "an earlier run": what a failed start leaves
    (a config, a log) must never block the corrected retry under the same name.
    """
    if resume:
        if not has_checkpoint(run_dir):
            raise RunDirError(f"{run_dir}: nothing to resume (no checkpoint in {CHECKPOINTS}/); start it without --resume")
        return
    if overwrite:
        return
    if has_adapter(run_dir) or has_checkpoint(run_dir):
        state = "a trained adapter" if has_adapter(run_dir) else "checkpoints of an unfinished run"
        raise RunDirError(
            f"{run_dir}: already holds {state}; choose another name (--set name=NEW), "
            "continue it with --resume, or replace it with --overwrite"
        )


@contextlib.contextmanager
def open_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> Iterator[Path]:
    """Create (or clear) `run_dir` and hold its lock while the body runs; the lock goes on any exit.

    A second training of the same run name is refused at once instead of writing into the same
    files. We use `filelock` (installed with huggingface_hub): the OS releases its lock when the
    process dies, so a killed run never leaves a stale lock behind.
    """
    from filelock import FileLock, Timeout

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirError(
            f"{run_dir}: another training is using this run directory right now; wait for it or "
            "choose another name (--set name=NEW)"
        ) from None
    try:
        check_run_dir(run_dir, resume=resume, overwrite=overwrite)  # again, now that we hold the lock
        if not resume:
            for child in run_dir.iterdir():  # leftovers of a failed start, or --overwrite
                if child.name == LOCK:
                    continue
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        yield run_dir
    finally:
        lock.release()


# ---------------------------------------------------------------- reading a run back


@dataclass
class RunFiles:
    """The parsed contents of one run directory; None where a file is absent."""

    path: Path
    config: dict[str, Any] | None
    log: list[dict[str, Any]] | None
    summary: dict[str, Any] | None
    data_stats: dict[str, Any] | None
    metrics: dict[str, Any] | None
    predictions: list[dict[str, Any]] | None

    @property
    def name(self) -> str:
        return str((self.config or {}).get("name") or self.path.name)


def require_run_dir(run_dir: str | Path) -> Path:
    """The path of an existing run directory, or a RunDirError saying what is missing."""
    path = Path(run_dir)
    if not path.is_dir():
        parent = path.parent if path.parent.is_dir() else None
        nearby = sorted(p.name for p in parent.iterdir() if p.is_dir())[:10] if parent else []
        hint = f" (runs in {parent}: {', '.join(nearby)})" if nearby else ""
        raise RunDirError(f"{path}: run directory not found{hint}; train one with `loratune train CONFIG`")
    return path


def _object(path: Path) -> dict[str, Any] | None:
    value = read_json_or_none(path)
    if value is not None and not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _rows(path: Path) -> list[dict[str, Any]] | None:
    return list(read_jsonl(path)) if path.is_file() else None


def load_run(run_dir: str | Path) -> RunFiles:
    """Read every known file of a run directory. Raises RunDirError when the directory does not
    exist or holds none of the run files."""
    path = require_run_dir(run_dir)
    if not any((path / name).is_file() for name in RUN_FILES):
        raise RunDirError(
            f"{path}: not a run directory (expected at least one of {', '.join(RUN_FILES)}); "
            "pass a directory under runs/ written by training"
        )
    config = None
    if (path / CONFIG).is_file():
        try:
            config = yaml.safe_load((path / CONFIG).read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise DataError(f"{path / CONFIG}: invalid YAML: {exc}") from None
    return RunFiles(
        path=path,
        config=config if isinstance(config, dict) else None,
        log=_rows(path / METRICS_LOG),
        summary=_object(path / SUMMARY),
        data_stats=_object(path / DATA_STATS),
        metrics=_object(path / METRICS),
        predictions=_rows(path / PREDICTIONS),
    )
