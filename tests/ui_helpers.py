"""Run directories for the ui tests, written the way training and evaluation write them, with known
numbers: a SQL run whose rows alternate between fixed, broken, both right and both wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

# Per row i % 4: (base execution accuracy, LoRA execution accuracy)
PATTERN = [(0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (0.0, 0.0)]


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def prediction_rows(count: int, *, scores: bool = True) -> list[dict[str, Any]]:
    """`count` SQL prediction records; row i's reference has i % 7 + 1 words, and its scores follow PATTERN
    (rougeL: base 0.5, LoRA 0.5 + (1 - 2 * (i % 2)) * 0.25)."""
    rows = []
    for i in range(count):
        base_ok, lora_ok = PATTERN[i % 4]
        row: dict[str, Any] = {"prompt": f"Question {i}?", "reference": " ".join(["SELECT"] * (i % 7 + 1)),
                               "base": f"base answer {i}", "lora": f"lora answer {i}"}
        if scores:
            row["scores"] = {"base": {"execution_accuracy": base_ok, "rougeL": 0.5},
                             "lora": {"execution_accuracy": lora_ok, "rougeL": 0.5 + (0.25 if i % 2 == 0 else -0.25)}}
            row["evidence"] = {v: {"ran": True, "error": None, "rows": [[i]], "row_count": 1, "gold_rows": [[i]],
                                   "gold_row_count": 1, "match": ok == 1.0}
                               for v, ok in (("base", base_ok), ("lora", lora_ok))}
        rows.append(row)
    return rows


def make_run(runs_dir: Path, name: str, *, rows: int = 8, state: str | None = "finished", pid: int | None = None,
             scores: bool = True, checkpoint: bool = False) -> Path:
    """A finished SQL run (config, summary, data stats, Trainer log, metrics, predictions, status)."""
    run = runs_dir / name
    run.mkdir(parents=True)
    config = {"name": name, "model": "tiny-model", "task": "sql-create-context", "output_dir": str(runs_dir),
              "train": {"batch_size": 4, "grad_accum": 2, "max_minutes": 15.0}}
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    _write_json(run / "run_summary.json", {"model": "tiny-model", "task": "sql-create-context", "steps": 50,
                                           "wall_time_s": 880.5, "train_rows": 1000, "batch_size": 4, "world_size": 1,
                                           "train_tokens": 40000, "eval_loss_end": 0.5})
    _write_json(run / "data_stats.json", {"train": {"rows": 1000, "source_tokens": {"mean": 60.0},
                                                    "target_tokens": {"mean": 20.0}}})
    log = [{"step": s, "loss": 2.0 - s / 50, "epoch": s / 100} for s in (10, 20, 30, 40, 50)]
    log += [{"step": 0, "eval_loss": 1.5}, {"step": 50, "eval_loss": 0.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log), encoding="utf-8")
    _write_json(run / "metrics.json", {
        "n": rows, "task": "sql-create-context", "model": "tiny-model",
        "base": {"execution_accuracy": 0.5, "rougeL": 0.5}, "lora": {"execution_accuracy": 0.5, "rougeL": 0.5},
        "intervals": {"execution_accuracy": {"diff": 0.0, "low": -0.25, "high": 0.25, "samples": 100}}})
    (run / "metrics.md").write_text("| Metric | LoRA | Base |\n", encoding="utf-8")
    (run / "predictions.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in prediction_rows(rows, scores=scores)), encoding="utf-8")
    if state is not None:
        _write_json(run / "status.json", {"state": state, "pid": pid or os.getpid(), "updated": "2026-01-02T03:04:05Z",
                                          "message": None, "step": 50, "max_steps": 50, "elapsed_s": 880.5,
                                          "eta_s": 0.0, "tokens_per_s": 45.4})
    if checkpoint:
        (run / "checkpoints" / "checkpoint-50").mkdir(parents=True)
        (run / "checkpoints" / "checkpoint-50" / "adapter_config.json").write_text("{}")
    return run
