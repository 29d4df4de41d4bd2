"""Base vs LoRA on held-out rows: same prompts, same generation settings, both sides scored.

The eval rows are rebuilt from the run's saved config with the same seed, so they are exactly
the rows training held out. Predictions, metrics and the original's ROUGE table land in the run
directory (or `--output`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from loratune.config import RunConfig, load_config
from loratune.errors import AdapterError
from loratune.tasks import Task, get_task

Log = Callable[[str], None]


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The resolved config a run saved, with optional `--set` overrides (e.g. another eval file)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise AdapterError(f"{run_dir}: not a run directory (no config.yaml); train one with `loratune train CONFIG`")
    return load_config(path, overrides)


def score_side(
    predictions: list[str], references: list[str], rows: list[dict[str, Any]], task: Task, cfg: RunConfig
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Aggregate metrics and per-example scores (for bootstrap intervals) for one side."""
    from loratune.metrics import text_metrics

    aggregate, per_example = text_metrics(predictions, references)
    if task.kind == "sql" and task.build_schema is not None:
        from loratune.sql import judge_sql

        judgement = judge_sql(
            references,
            predictions,
            [task.build_schema(row) for row in rows],
            db_ids=[row.get("db_id") for row in rows],
            db_dir=cfg.eval.sql.databases,
            num_dbs=cfg.eval.sql.num_dbs,
            seed=cfg.eval.seed,
            timeout_s=cfg.eval.sql.timeout_s,
        )
        sql = judgement.as_dict()
        aggregate.update(
            sql_valid=sql["valid"],
            sql_exact_match=sql["exact_match"],
            execution_accuracy=sql["execution_accuracy"],
            execution_accuracy_real_db=sql["execution_accuracy_real_db"],
        )
        records = judgement.records
        per_example["sql_valid"] = [float(r.valid) for r in records]
        per_example["sql_exact_match"] = [float(r.exact_match) for r in records]
        per_example["execution_accuracy"] = [float(r.exec_match) for r in records]
        if sql["execution_accuracy_real_db"] is not None:
            per_example["execution_accuracy_real_db"] = [
                float(bool(r.exec_match_real_db)) for r in records if r.exec_match_real_db is not None
            ]
    return aggregate, per_example


def evaluate_run(
    run_dir: str | Path,
    *,
    limit: int | None = None,
    overrides: list[str] | None = None,
    output_dir: str | Path | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Generate with the base model and with base + adapter on held-out rows; score and save both."""
    from peft import PeftModel

    from loratune.data import eval_prompts, load_splits
    from loratune.generate import generate_texts
    from loratune.lora import resolve_adapter_dir
    from loratune.metrics import paired_bootstrap
    from loratune.models import load_model
    from loratune.report import format_metrics_tables

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, overrides)
    adapter_dir = resolve_adapter_dir(run_dir)
    out = Path(output_dir) if output_dir else run_dir
    out.mkdir(parents=True, exist_ok=True)
    task = get_task(cfg.task)

    _, rows = load_splits(cfg.data, task, cfg.train.seed)
    limit = limit or cfg.eval.limit
    rows = rows[:limit] if limit else rows
    loaded = load_model(cfg.model)
    prompts = eval_prompts(rows, task, loaded.tokenizer, loaded.kind, cfg.data)
    references = [task.target(row) for row in rows]
    settings = cfg.eval.generation
    common = dict(batch_size=cfg.eval.batch_size, task_kind=task.kind)

    started = time.perf_counter()
    base = generate_texts(loaded.model, loaded.tokenizer, loaded.kind, prompts, settings, progress="base", **common)
    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir))
    lora = generate_texts(model, loaded.tokenizer, loaded.kind, prompts, settings, progress="lora", **common)
    generation_s = time.perf_counter() - started

    base_scores, base_each = score_side(base, references, rows, task, cfg)
    lora_scores, lora_each = score_side(lora, references, rows, task, cfg)
    intervals = {
        key: paired_bootstrap(base_each[key], lora_each[key], samples=cfg.eval.bootstrap_samples, seed=cfg.eval.seed)
        for key in base_each
        if key in lora_each and len(base_each[key]) == len(lora_each[key]) and base_each[key]
    }
    metrics = {
        "n": len(rows),
        "task": cfg.task,
        "model": cfg.model,
        "generation_s": round(generation_s, 1),
        "base": base_scores,
        "lora": lora_scores,
        "intervals": intervals,
    }
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        for row, prompt, reference, b, lo in zip(rows, prompts, references, base, lora):
            record = {"prompt": prompt, "reference": reference, "base": b, "lora": lo}
            if row.get("db_id"):
                record["db_id"] = row["db_id"]
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    tables = format_metrics_tables(metrics)
    (out / "metrics.md").write_text(tables + "\n", encoding="utf-8")
    log(f"Evaluated {len(rows)} held-out rows in {generation_s:.0f}s (base and LoRA)")
    log(tables)
    return metrics
