"""The runs the ui shows: one row per run directory, one run in full, and what a running one is
doing now (curves, progress, the tail of its log).

Everything is read from the files training and evaluation write (`run_dir.py` names them), so a
run started from the terminal shows the same as one the ui launched. The page polls these every
2 s, so parsed files are kept by (mtime, size) and read again only when they change; predictions,
the one big file, are read by `answers.py` alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from loratune import run_dir as files
from loratune.errors import DataError, LoratuneError
from loratune.evaluation.metrics import headline_metric
from loratune.json_files import read_json, read_jsonl
from loratune.run_status import LOG, STATUS, RunState, run_state
from loratune.ui.paths import RUN_NAME

Overlay = dict[str, tuple[str, str | None]]
"""Run name -> (state, message) that the launcher knows better than the run's files (queued runs,
runs whose process has not written status.json yet)."""

PROGRESS_FIELDS = ("step", "max_steps", "elapsed_s", "eta_s", "tokens_per_s")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser: 50 configs in ms, not 100s of ms
_cache: dict[Path, tuple[tuple[int, int], Any]] = {}
CACHE_FILES = 2000


def _cached(path: Path, parse: Callable[[Path], Any]) -> Any:
    """`parse(path)`, reused while the file's mtime and size stay the same; None when absent."""
    try:
        stat = path.stat()
    except OSError:
        _cache.pop(path, None)
        return None
    stamp = (stat.st_mtime_ns, stat.st_size)
    hit = _cache.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    value = parse(path)
    if len(_cache) >= CACHE_FILES:
        _cache.clear()
    _cache[path] = (stamp, value)
    return value


def _yaml_object(path: Path) -> dict[str, Any] | None:
    try:
        value = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: invalid YAML: {exc}") from None
    return value if isinstance(value, dict) else None


def _json_object(path: Path) -> dict[str, Any] | None:
    value = read_json(path)
    return value if isinstance(value, dict) else None


def read_object(path: Path) -> dict[str, Any] | None:
    """A JSON (or, for .yaml, YAML) object file, or None when it is absent or not an object."""
    return _cached(path, _yaml_object if path.suffix == ".yaml" else _json_object)


def is_run(path: Path, root: Path) -> bool:
    """Whether a folder under runs_dir (`root`, resolved) is a run: a plain name, inside runs_dir once
    symlinks are resolved, holding any file a run writes."""
    if not RUN_NAME.fullmatch(path.name) or not path.is_dir() or not path.resolve().is_relative_to(root):
        return False
    names = (*files.RUN_FILES, STATUS, files.ADAPTER, files.CHECKPOINTS)
    return any((path / name).exists() for name in names)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _updated(run_dir: Path, status: dict[str, Any] | None) -> str | None:
    if status and isinstance(status.get("updated"), str):
        return status["updated"]
    times = []
    for name in (*files.RUN_FILES, LOG):
        try:
            times.append((run_dir / name).stat().st_mtime)
        except OSError:
            continue
    return _iso(max(times)) if times else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def rows_seen(summary: dict[str, Any], config: dict[str, Any], data_stats: dict[str, Any],
              steps: int | None) -> tuple[int | None, str | None]:
    """Training rows the run has gone through, and how that was counted: "steps" (steps x batch_size x
    grad_accum x world_size) or "tokens" (train_tokens / mean tokens of a training row)."""
    train = config.get("train") or {}
    batch = summary.get("batch_size", train.get("batch_size"))
    accum = train.get("grad_accum") or 1
    world = summary.get("world_size") or 1
    if _number(steps) and _number(batch) and _number(accum) and _number(world):
        return int(steps * batch * accum * world), "steps"
    lengths = (data_stats.get("train") or {}) if isinstance(data_stats.get("train"), dict) else {}
    mean = sum(((lengths.get(k) or {}).get("mean") or 0) for k in ("source_tokens", "target_tokens"))
    tokens = summary.get("train_tokens")
    if _number(tokens) and _number(mean) and mean > 0:
        return round(tokens / mean), "tokens"
    return None, None


def headline(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run's headline metric: base and LoRA values, and the 95% interval of LoRA - base."""
    if not metrics:
        return None
    try:
        key = headline_metric(metrics)
    except LoratuneError:
        return None
    interval = (metrics.get("intervals") or {}).get(key) or {}
    return {"metric": key, "base": (metrics.get("base") or {}).get(key), "lora": (metrics.get("lora") or {}).get(key),
            "low": interval.get("low"), "high": interval.get("high")}


def _state(run_dir: Path, overlay: Overlay) -> tuple[str, str | None, dict[str, Any] | None]:
    known = run_state(run_dir) if run_dir.is_dir() else RunState("failed", "no run directory", None)
    if run_dir.name in overlay:
        state, message = overlay[run_dir.name]
        return state, message, known.status
    return known.state, known.message, known.status


def run_row(run_dir: Path, overlay: Overlay | None = None) -> dict[str, Any]:
    """The RunRow of one run (docs/ui.md): state, what it trains, how far it got, its headline."""
    state, message, status = _state(run_dir, overlay or {})
    try:
        config = read_object(run_dir / files.CONFIG) or {}
        summary = read_object(run_dir / files.SUMMARY) or {}
        metrics = read_object(run_dir / files.METRICS)
        data_stats = read_object(run_dir / files.DATA_STATS) or {}
    except LoratuneError as exc:  # one damaged file must not hide the other runs
        config, summary, metrics, data_stats = {}, {}, None, {}
        message = f"{message}; {exc}" if message else str(exc)
    status = status or {}
    train = config.get("train") or {}
    steps = summary.get("steps", status.get("step"))
    seen, seen_from = rows_seen(summary, config, data_stats, steps)
    return {
        "name": run_dir.name, "state": state, "message": message,
        "task": summary.get("task") or config.get("task"), "model": summary.get("model") or config.get("model"),
        "max_minutes": train.get("max_minutes", summary.get("max_minutes")),
        "wall_time_s": summary.get("wall_time_s", status.get("elapsed_s")),
        "steps": steps,
        "train_rows": summary.get("train_rows", (data_stats.get("train") or {}).get("rows")
                                  if isinstance(data_stats.get("train"), dict) else None),
        "rows_seen": seen, "rows_seen_from": seen_from,
        "headline": headline(metrics),
        "updated": _updated(run_dir, status or None),
    }


def list_runs(runs_dir: Path, overlay: Overlay | None = None) -> list[dict[str, Any]]:
    """A RunRow per run under `runs_dir` (plus the overlay's runs that have no folder yet), the most
    recently updated first."""
    overlay = overlay or {}
    root = runs_dir.resolve()
    paths = {p.name: p for p in runs_dir.iterdir() if is_run(p, root)} if runs_dir.is_dir() else {}
    for name in overlay:
        paths.setdefault(name, runs_dir / name)
    rows = [run_row(path, overlay) for path in paths.values()]
    rows.sort(key=lambda r: r["name"])
    rows.sort(key=lambda r: r["updated"] or "", reverse=True)
    return rows


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def run_detail(run_dir: Path, overlay: Overlay | None = None, config_text: str | None = None) -> dict[str, Any]:
    """A RunRow with the run's config text, status, summary and metric tables. `config_text` is shown
    when the run has no config.yaml yet (a queued run: the config the ui saved)."""
    row = run_row(run_dir, overlay)
    try:
        summary = read_object(run_dir / files.SUMMARY)
    except LoratuneError:
        summary = None
    return {**row, "config": _text(run_dir / files.CONFIG) or config_text, "status": _status(run_dir),
            "summary": summary, "metrics_md": _text(run_dir / "metrics.md")}


def _status(run_dir: Path) -> dict[str, Any] | None:
    try:
        return read_object(run_dir / STATUS)
    except LoratuneError:
        return None


# ---------------------------------------------------------------- curves and the live view


def _log_records(run_dir: Path) -> list[dict[str, Any]]:
    return _cached(run_dir / files.METRICS_LOG, read_jsonl) or []


def curves(run_dir: Path) -> dict[str, list[list[float]]]:
    """Train and eval loss against the optimizer step (metrics.jsonl), and accuracy against training
    minutes (progress.json, written by `evaluation.over_time`; the base model at minute 0)."""
    try:
        records = _log_records(run_dir)
    except LoratuneError:
        records = []
    out: dict[str, list[list[float]]] = {"train_loss": [], "eval_loss": [], "accuracy": []}
    for record in records:
        for key, name in (("loss", "train_loss"), ("eval_loss", "eval_loss")):
            if _number(record.get("step")) and _number(record.get(key)):
                out[name].append([record["step"], record[key]])
    try:
        progress = read_object(run_dir / "progress.json") or {}
    except LoratuneError:
        progress = {}
    base = (progress.get("base") or {}).get("accuracy")
    if _number(base):
        out["accuracy"].append([0.0, base])
    for point in progress.get("points") or []:
        if isinstance(point, dict) and _number(point.get("minutes")) and _number(point.get("accuracy")):
            out["accuracy"].append([point["minutes"], point["accuracy"]])
    return out


def tail_lines(path: Path, count: int, block: int = 65536) -> list[str]:
    """The last `count` lines of a text file, reading backwards from its end (a training log can
    grow to many megabytes)."""
    if count <= 0:
        return []
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            end = position = handle.tell()
            data = b""
            while position > 0 and data.count(b"\n") <= count:
                position = max(0, position - block)
                handle.seek(position)
                data = handle.read(end - position)
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines[-count:]


def newest(paths: list[Path]) -> Path | None:
    """The most recently written of `paths` that exist."""
    found = []
    for path in paths:
        try:
            found.append((path.stat().st_mtime_ns, path))
        except OSError:
            continue
    return max(found)[1] if found else None


def live(run_dir: Path, log_lines: int, console: Path | None = None, overlay: Overlay | None = None) -> dict[str, Any]:
    """What a running run is doing: state, progress, the curves so far and the tail of its log
    (log.txt, or the console log of the process the ui launched, whichever was written last)."""
    state, message, status = _state(run_dir, overlay or {})
    status = status or {}
    log = newest([run_dir / LOG] + ([console] if console else []))
    return {"state": state, "message": message, **{key: status.get(key) for key in PROGRESS_FIELDS},
            **curves(run_dir), "log_tail": tail_lines(log, log_lines) if log else []}
