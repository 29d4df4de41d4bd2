"""The forgetting matrix: the base model and every stage's adapter, scored on every stage's eval set.

Row = adapter (`base`, then the stages in order), column = eval set (one per stage). Reading down a
column shows what each later stage did to that stage's skill; the diagonal is what each stage
learnt. SQL sets are scored by execution accuracy (synthesized databases), others by ROUGE-L.

The base model is loaded once and the adapters are swapped in and out of one peft model, so the
matrix costs one model load. Each cell's predictions are appended to `cells/<adapter>--<set>.jsonl`
batch by batch; a rerun keeps every prediction whose cell key (adapter weights, prompts, generation
settings) still matches, so a killed evaluation resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from loratune.config import RunConfig
from loratune.data import eval_prompts, load_splits
from loratune.evaluation.base_vs_lora import score_answers
from loratune.evaluation.metrics import FORGETTING_METRIC_NAMES as METRIC_NAMES
from loratune.evaluation.metrics import paired_bootstrap
from loratune.inference.generate import generate_texts
from loratune.json_files import append_jsonl, read_jsonl, write_json, write_text
from loratune.models.load import load_model
from loratune.models.lora import resolve_adapter_dir
from loratune.tasks import Task, get_task

Log = Callable[[str], None]
BASE = "base"


@dataclass
class EvalSet:
    """One stage's held-out rows, rendered once for every adapter."""

    name: str
    cfg: RunConfig
    task: Task
    rows: list[dict[str, Any]]
    prompts: list[str]
    references: list[str]

    @property
    def metric(self) -> str:
        return "execution_accuracy" if self.task.family == "sql" and self.task.build_schema else "rougeL"


def build_eval_sets(stages: list[RunConfig], tokenizer: Any, model_type: str, limit: int | None) -> list[EvalSet]:
    """Each stage's eval rows exactly as its own evaluation would pick them (same split, same seed)."""

    sets = []
    for cfg in stages:
        task = get_task(cfg.task)
        _, rows = load_splits(cfg.data, task, cfg.train.seed)
        n = limit or cfg.eval.limit
        rows = rows[:n] if n else rows
        prompts = eval_prompts(rows, task, tokenizer, model_type, cfg.data)
        sets.append(EvalSet(cfg.name, cfg, task, rows, prompts, [task.target(r) for r in rows]))
    return sets


def adapter_digest(adapter_dir: Path) -> str:
    """sha256 of an adapter's weight files: a retrained adapter gets a new one, a kept one does not."""
    digest = hashlib.sha256()
    for path in sorted(adapter_dir.glob("adapter_model.*")):
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def cell_key(adapter_id: str, eval_set: EvalSet) -> str:
    """What a cell's predictions depend on, hashed: a retrained adapter or new settings invalidate it."""
    parts = {"adapter": adapter_id, "generation": asdict(eval_set.cfg.eval.generation), "task": eval_set.task.name}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def generate_cell(model: Any, tokenizer: Any, model_type: str, eval_set: EvalSet, path: Path, key: str) -> list[str]:
    """Predictions for one (adapter, eval set) cell, reusing and appending to `path` batch by batch."""

    done: dict[int, str] = {}
    if path.is_file():
        for record in read_jsonl(path):  # a torn last line (killed mid-write) is dropped
            i = record.get("i")
            if (record.get("key") == key and isinstance(i, int) and i < len(eval_set.prompts)
                    and record.get("prompt") == eval_set.prompts[i]):
                done[i] = record["prediction"]
    kept = [{"key": key, "i": i, "prompt": eval_set.prompts[i], "reference": eval_set.references[i], "prediction": p}
            for i, p in sorted(done.items())]
    # Rewritten atomically so stale records (another key, rows beyond --limit) go and kept ones stay.
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))

    # Longest first in batches of similar length, as generate_texts orders them, so saving after
    # every batch costs no extra padding.
    todo = sorted((i for i in range(len(eval_set.prompts)) if i not in done), key=lambda i: -len(eval_set.prompts[i]))
    size = eval_set.cfg.eval.batch_size
    for start in range(0, len(todo), size):
        batch = todo[start : start + size]
        texts = generate_texts(model, tokenizer, model_type, [eval_set.prompts[i] for i in batch],
                               eval_set.cfg.eval.generation, batch_size=size, task_family=eval_set.task.family)
        append_jsonl(path, [
            {"key": key, "i": i, "prompt": eval_set.prompts[i], "reference": eval_set.references[i], "prediction": t}
            for i, t in zip(batch, texts)
        ])
        done.update(zip(batch, texts))
    return [done[i] for i in range(len(eval_set.prompts))]


def write_forgetting(folder: Path, stages: list[RunConfig], *, limit: int | None = None, log: Log = print) -> dict[str, Any]:
    """Score `base` and every stage's adapter on every stage's eval set; write forgetting.json,
    forgetting.png and forgetting.md in `folder`. Returns the forgetting.json content."""
    from peft import PeftModel


    loaded = load_model(stages[0].model)
    eval_sets = build_eval_sets(stages, loaded.tokenizer, loaded.model_type, limit)
    adapter_dirs = [resolve_adapter_dir(cfg.run_dir) for cfg in stages]
    # peft adapter names become module keys, which may not contain dots; stage names may.
    model = PeftModel.from_pretrained(loaded.model, str(adapter_dirs[0]), adapter_name="stage0")
    for k, adapter_dir in enumerate(adapter_dirs[1:], start=1):
        model.load_adapter(str(adapter_dir), adapter_name=f"stage{k}")
    model.eval()
    identities = [f"{BASE}:{stages[0].model}"] + [adapter_digest(d) for d in adapter_dirs]

    adapters = [BASE] + [cfg.name for cfg in stages]
    cells_dir = folder / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    scores: list[list[float]] = []
    per_row: list[list[list[float]]] = []  # per adapter, per eval set: each row's score (for intervals)
    for a, adapter in enumerate(adapters):
        scores.append([])
        per_row.append([])
        for eval_set in eval_sets:
            started = time.perf_counter()
            path = cells_dir / f"{adapter}--{eval_set.name}.jsonl"
            key = cell_key(identities[a], eval_set)
            if adapter == BASE:
                with model.disable_adapter():
                    predictions = generate_cell(model, loaded.tokenizer, loaded.model_type, eval_set, path, key)
            else:
                model.set_adapter(f"stage{a - 1}")
                predictions = generate_cell(model, loaded.tokenizer, loaded.model_type, eval_set, path, key)
            aggregate, each = score_answers(predictions, eval_set.references, eval_set.rows, eval_set.task, eval_set.cfg)
            scores[-1].append(float(aggregate[eval_set.metric]))
            per_row[-1].append(list(each[eval_set.metric]))
            log(f"{adapter} on {eval_set.name}: {METRIC_NAMES[eval_set.metric]} {scores[-1][-1]:.4f} "
                f"({len(predictions)} rows, {time.perf_counter() - started:.0f}s)")

    result = {
        "adapters": adapters,
        "eval_sets": [s.name for s in eval_sets],
        "metric": {s.name: s.metric for s in eval_sets},
        "scores": scores,
        "rows": {s.name: len(s.rows) for s in eval_sets},
    }
    write_json(folder / "forgetting.json", result)
    table = format_matrix(result)
    write_text(folder / "forgetting.md", forgetting_section(result, per_row, stages[0].eval.seed) + "\n")
    log(table)
    log(f"Forgetting matrix: {folder / 'forgetting.json'}, {folder / 'forgetting.md'}")
    return result


# ---------------------------------------------------------------- figures and words


def format_matrix(result: dict[str, Any]) -> str:
    """The matrix as a markdown table: one row per adapter, one column per eval set (and metric)."""
    header = ["adapter \\ eval set"] + [f"{s} ({METRIC_NAMES[result['metric'][s]]}, n={result['rows'][s]})"
                                         for s in result["eval_sets"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for adapter, row in zip(result["adapters"], result["scores"]):
        lines.append("| " + " | ".join([adapter] + [f"{v:.4f}" for v in row]) + " |")
    return "\n".join(lines)


def _change(before: list[float], after: list[float], seed: int) -> str:
    """`0.183 -> 0.150 (-0.033; 95% interval -0.090 to +0.017, within noise)`."""

    b, a = sum(before) / len(before), sum(after) / len(after)
    ci = paired_bootstrap(before, after, samples=1000, seed=seed)
    if ci["low"] > 0:
        verdict = "a gain"
    elif ci["high"] < 0:
        verdict = "a loss"
    else:
        verdict = "no change" if b == a else "within noise"
    return f"{b:.3f} -> {a:.3f} ({a - b:+.3f}; 95% interval {ci['low']:+.3f} to {ci['high']:+.3f}, {verdict})"


def forgetting_section(result: dict[str, Any], per_row: list[list[list[float]]], seed: int = 0) -> str:
    """The report section: the matrix, the heatmap, and what each later stage cost earlier ones."""
    sets, metric, rows = result["eval_sets"], result["metric"], result["rows"]
    lines = [
        "## Forgetting across stages", "",
        "Each row is an adapter (the base model, then each stage's adapter in training order), each "
        "column a stage's held-out eval set. Execution accuracy on synthesized databases for SQL sets, "
        "ROUGE-L otherwise. Reading down a column shows what later stages did to that stage's skill.", "",
        format_matrix(result), "", "![forgetting matrix](forgetting.png)", "",
    ]
    for k in range(1, len(sets)):  # row k + 1 is stage k's adapter (row 0 is base)
        stage, earlier = sets[k], sets[k - 1]
        own = _change(per_row[k][k], per_row[k + 1][k], seed)
        lines.append(f"- **What stage {k + 1} ({stage}) cost stage {k} ({earlier})**: "
                     f"{METRIC_NAMES[metric[earlier]]} on {earlier}'s eval set ({rows[earlier]} rows) went "
                     f"{_change(per_row[k][k - 1], per_row[k + 1][k - 1], seed)} from {earlier}'s adapter to "
                     f"{stage}'s. On its own eval set, {stage} went {own}.")
        for j in range(k - 1):
            lines.append(f"  - on {sets[j]}'s eval set ({rows[sets[j]]} rows): "
                         f"{_change(per_row[k][j], per_row[k + 1][j], seed)}")
    first = sets[0]
    lines.append(f"- **Stage 1 ({first}) against the base model** on its own eval set: "
                 f"{_change(per_row[0][0], per_row[1][0], seed)}.")
    lines += ["", "Intervals are paired bootstraps over the eval rows (1,000 resamples); with a few dozen rows "
              "only large changes are outside the noise."]
    return "\n".join(lines)
