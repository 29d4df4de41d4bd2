"""The answers view: each held-out row's prompt, reference, base and LoRA answers and their per-row
scores (predictions.jsonl), filtered to the rows LoRA got wrong, fixed or broke by one metric.

Filters (on the chosen metric):
  all     every row
  fixed   LoRA scores higher than the base
  broken  LoRA scores lower than the base
  wrong   LoRA is not right: below 1 on a 0/1 metric (exact match, execution accuracy), below the
          base on a graded one (ROUGE)
Rows that lack the metric (a row without a database has no real-database accuracy) are left out of
every filter but `all`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratune import run_dir as files
from loratune.errors import LoratuneError, RequestError
from loratune.evaluation.metrics import headline_metric
from loratune.json_files import read_jsonl
from loratune.ui.runs import read_object

FILTERS = ("all", "wrong", "fixed", "broken")
SORTS = ("none", "length", "-length")
MAX_LIMIT = 1000
EXTRAS = ("verdicts", "evidence", "db_id")
"""Fields a row carries when its task wrote them (TAT-QA verdicts, SQL evidence, Spider db_id)."""

KEEP_FILES = 4
"""Prediction files kept parsed (paging and re-filtering one run re-reads nothing)."""


def _score(row: dict[str, Any], variant: str, metric: str) -> float | None:
    value = ((row.get("scores") or {}).get(variant) or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class Answers:
    """A parsed predictions.jsonl, with each metric's per-row values taken out once when first asked."""

    rows: list[dict[str, Any]]
    keys: list[str]
    """Every metric the rows carry a per-row score for, in the order they first appear."""
    _values: dict[str, tuple[list[float | None], list[float | None], bool]] = field(default_factory=dict)

    def values(self, metric: str) -> tuple[list[float | None], list[float | None], bool]:
        """(base values, LoRA values, whether the metric is 0/1 on these rows)."""
        if metric not in self._values:
            base = [_score(row, "base", metric) for row in self.rows]
            lora = [_score(row, "lora", metric) for row in self.rows]
            binary = all(v in (0.0, 1.0) for v in (*base, *lora) if v is not None)
            self._values[metric] = (base, lora, binary)
        return self._values[metric]


_loaded: OrderedDict[Path, tuple[tuple[int, int], Answers]] = OrderedDict()


def metric_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Every metric the rows carry a per-row score for, in the order they first appear."""
    keys: dict[str, None] = {}
    for row in rows:
        scores = row.get("scores")
        if isinstance(scores, dict):
            for variant in ("base", "lora"):
                if isinstance(scores.get(variant), dict):
                    keys.update(dict.fromkeys(scores[variant]))
    return list(keys)


def load_answers(run_dir: Path) -> Answers:
    """The run's predictions.jsonl (kept parsed while the file is unchanged); a 409 when the run has
    not been evaluated."""
    path = run_dir / files.PREDICTIONS
    try:
        stat = path.stat()
    except OSError:
        raise RequestError(409, f"run {run_dir.name!r} has no {files.PREDICTIONS} yet; evaluate it with "
                                f"`loratune eval {run_dir}`", code="not_evaluated") from None
    stamp = (stat.st_mtime_ns, stat.st_size)
    hit = _loaded.get(path)
    if hit is not None and hit[0] == stamp:
        _loaded.move_to_end(path)
        return hit[1]
    rows = list(read_jsonl(path))
    answers = Answers(rows, metric_keys(rows))
    _loaded[path] = (stamp, answers)
    while len(_loaded) > KEEP_FILES:
        _loaded.popitem(last=False)
    return answers


def default_metric(run_dir: Path, keys: list[str]) -> str:
    """The run's headline metric (from metrics.json) when the rows carry it, else the first key."""
    try:
        metrics = read_object(run_dir / files.METRICS)
        key = headline_metric(metrics) if metrics else None
    except LoratuneError:
        key = None
    return key if key in keys else keys[0]


def keep(base: float | None, lora: float | None, how: str, binary: bool) -> bool:
    """Whether a row with these scores passes filter `how`."""
    if how == "all":
        return True
    if base is None or lora is None:
        return False
    if how == "fixed":
        return lora > base
    if how == "broken":
        return lora < base
    return lora < 1.0 if binary else lora < base


def _text(value: Any) -> str:
    """A prediction field as text; chat prompts (lists of messages) become `role: content` lines."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
                         for m in value)
    return str(value)


def shown_row(index: int, row: dict[str, Any]) -> dict[str, Any]:
    out = {"index": index, "prompt": _text(row.get("prompt")), "reference": _text(row.get("reference")),
           "base": _text(row.get("base")), "lora": _text(row.get("lora")), "scores": row.get("scores")}
    out.update({key: row[key] for key in EXTRAS if row.get(key) is not None})
    return out


def check_query(how: str, sort: str, offset: int, limit: int) -> None:
    """A 400 naming the query parameter that is out of range."""
    if how not in FILTERS:
        raise RequestError(400, f"filter {how[:50]!r}: expected one of {', '.join(FILTERS)}", param="filter")
    if sort not in SORTS:
        raise RequestError(400, f"sort {sort[:50]!r}: expected one of {', '.join(SORTS)}", param="sort")
    if offset < 0:
        raise RequestError(400, "offset must be 0 or more", param="offset")
    if not 1 <= limit <= MAX_LIMIT:
        raise RequestError(400, f"limit must be between 1 and {MAX_LIMIT}", param="limit")


def answers_page(run_dir: Path, *, how: str = "all", metric: str | None = None, sort: str = "none",
                 offset: int = 0, limit: int = 100) -> dict[str, Any]:
    """One page of a run's answers after filter `how` on `metric` (default: the headline metric),
    sorted by the reference's length when asked."""
    check_query(how, sort, offset, limit)
    answers = load_answers(run_dir)
    rows, keys = answers.rows, answers.keys
    if not keys:
        raise RequestError(409, f"{run_dir / files.PREDICTIONS} has no per-row scores (evaluated by an older "
                                f"loratune); score it again with `loratune eval {run_dir} --rescore`",
                           code="no_row_scores")
    metric = metric or default_metric(run_dir, keys)
    if metric not in keys:
        raise RequestError(400, f"metric {metric[:50]!r}: the rows hold {', '.join(keys)}", param="metric")
    base, lora, binary = answers.values(metric)
    picked = [i for i in range(len(rows)) if keep(base[i], lora[i], how, binary)]
    if sort != "none":
        picked.sort(key=lambda i: len(_text(rows[i].get("reference"))), reverse=sort == "-length")
    page = [shown_row(i, rows[i]) for i in picked[offset:offset + limit]]
    return {"total": len(picked), "shown": len(page), "metric": metric, "metrics": keys, "rows": page}
