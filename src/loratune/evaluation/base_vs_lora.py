"""Base vs LoRA on held-out rows: same prompts, same generation settings, both variants scored.

The eval rows are rebuilt from the run's saved config with the same seed, so they are exactly
the rows training held out. Generation is the slow part, so each variant's answers are appended to
`predictions.base.jsonl` / `predictions.lora.jsonl` batch by batch: a crash or a kill loses one
batch, a second run on the same output picks up where the first stopped, and `--rescore` judges
saved answers again (a new database folder, a judge fix) without generating. Scoring always comes
after the answers are safe on disk; then `predictions.jsonl` gets one record per row with both
answers, each variant's per-row scores and, for SQL, what each query returned beside the gold.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from loratune.config import GenerationSettings, RunConfig, load_config
from loratune.data import eval_prompts, load_splits
from loratune.errors import RunDirError
from loratune.evaluation.ectsum_scores import ectsum_scores, numeric_precisions
from loratune.evaluation.metrics import paired_bootstrap, text_metrics
from loratune.evaluation.tables import format_metrics_tables
from loratune.evaluation.tatqa_scores import add_verdicts, tatqa_scores
from loratune.inference.generate import generate_texts
from loratune.json_files import append_jsonl, read_jsonl, write_json, write_text
from loratune.models.load import inspect_model, load_model
from loratune.models.lora import resolve_adapter_dir
from loratune.run_dir import CONFIG, METRICS, PREDICTIONS, require_run_dir
from loratune.sql import SqlJudgement, judge_sql
from loratune.tasks import Task, get_task

Log = Callable[[str], None]
VARIANTS = ("base", "lora")


def answers_file(out: Path, variant: str) -> Path:
    return out / f"predictions.{variant}.jsonl"


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The resolved config a run saved, with optional `--set` overrides (e.g. another eval file)."""
    path = require_run_dir(run_dir) / CONFIG
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no {CONFIG}); train one with `loratune train CONFIG`")
    return load_config(path, overrides)


@dataclass
class VariantScores:
    """One variant's scores on the eval rows."""

    aggregate: dict[str, Any]
    """What metrics.json holds for the variant."""
    per_row: dict[str, list[float | None]]
    """Each metric's value per row, aligned with the rows; None where it does not apply to a row
    (no real database, a summary without numbers). predictions.jsonl shows these."""
    bootstrap: dict[str, list[float]]
    """The values `paired_bootstrap` resamples: only the rows a metric applies to, and a ratio
    metric's linearised values (`ectsum_scores.bootstrap_values`)."""
    evidence: list[dict[str, Any]] | None = None
    """SQL tasks: per row, what the prediction and the gold returned (`sql.evidence`)."""

    def add(self, aggregate: dict[str, Any], each: dict[str, list[float]]) -> None:
        self.aggregate.update(aggregate)
        self.per_row.update(each)
        self.bootstrap.update(each)


def score_variant(
    predictions: list[str], references: list[str], rows: list[dict[str, Any]], task: Task, cfg: RunConfig
) -> VariantScores:
    """Every metric the task family has, aggregated and per row, for one variant's answers."""
    aggregate, per_example = text_metrics(predictions, references)
    scores = VariantScores(aggregate, dict(per_example), per_example)
    if task.family == "tat-qa":
        scores.add(*tatqa_scores(predictions, rows))
    if task.family == "ectsum":
        scores.add(*ectsum_scores(predictions, rows))
        if "num_precision" in scores.bootstrap:
            scores.per_row["num_precision"] = numeric_precisions(predictions, rows)
    if task.family == "sql" and task.build_schema is not None:
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
        add_sql_scores(scores, judgement)
    return scores


def add_sql_scores(scores: VariantScores, judgement: SqlJudgement) -> None:
    """The judge's verdicts as metrics (0/1 per row) and its evidence per row."""
    sql = judgement.as_dict()
    records = judgement.records
    scores.add(
        {"sql_valid": sql["valid"], "sql_exact_match": sql["exact_match"],
         "execution_accuracy": sql["execution_accuracy"],
         "execution_accuracy_real_db": sql["execution_accuracy_real_db"]},
        {"sql_valid": [float(r.valid) for r in records], "sql_exact_match": [float(r.exact_match) for r in records],
         "execution_accuracy": [float(r.exec_match) for r in records]},
    )
    if sql["execution_accuracy_real_db"] is not None:
        real = [None if r.exec_match_real_db is None else float(r.exec_match_real_db) for r in records]
        scores.per_row["execution_accuracy_real_db"] = real
        scores.bootstrap["execution_accuracy_real_db"] = [v for v in real if v is not None]
    scores.evidence = [r.evidence.as_dict() if r.evidence is not None else None for r in records]


def score_answers(
    predictions: list[str], references: list[str], rows: list[dict[str, Any]], task: Task, cfg: RunConfig
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Aggregate metrics and per-example scores (for bootstrap intervals) for one variant."""
    scores = score_variant(predictions, references, rows, task, cfg)
    return scores.aggregate, scores.bootstrap


# ---------------------------------------------------------------- answers kept as they are made


@dataclass
class AnswerLog:
    """One variant's generation: what identifies a saved answer as still valid, and where it goes."""

    variant: str
    path: Path
    stamp: str
    """Model identity + generation settings: an answer saved under another stamp is stale."""

    def key(self, prompt: str) -> str:
        return hashlib.sha1(f"{self.stamp}\n{prompt}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


def saved_answers(job: AnswerLog, prompts: list[str]) -> dict[int, str]:
    """Answers already on disk that still match their prompt, model and settings. The file is
    rewritten with only those (a torn last line or stale rows are dropped)."""
    if not job.path.is_file():
        return {}
    keys = [job.key(p) for p in prompts]
    kept: dict[int, str] = {}
    for record in read_jsonl(job.path):
        index = record.get("i")
        if isinstance(index, int) and 0 <= index < len(prompts) and record.get("key") == keys[index]:
            kept[index] = str(record.get("text", ""))
    write_text(job.path, "".join(json.dumps({"i": i, "key": keys[i], "text": t}, ensure_ascii=False) + "\n"
                                 for i, t in sorted(kept.items())))
    return kept


Generate = Callable[[list[str], Callable[[int, str], None]], list[str]]
"""generate(prompts, on_answer): answers in order, `on_answer(k, text)` called as the k-th is ready."""


def generate_answers(job: AnswerLog, prompts: list[str], generate: Generate, batch_size: int, log: Log) -> list[str]:
    """Answers for every prompt, generating only those not saved yet and appending each answer to
    disk as it is ready, so a crash or a kill loses the rows in flight, not the variant."""
    answers = saved_answers(job, prompts)
    pending = [i for i in range(len(prompts)) if i not in answers]
    if answers:
        log(f"{job.variant}: {len(answers)} answers kept from an earlier run in {job.path.name}; {len(pending)} to go")

    def save(k: int, text: str) -> None:
        i = pending[k]
        append_jsonl(job.path, [{"i": i, "key": job.key(prompts[i]), "text": text}])
        answers[i] = text
        if len(answers) % batch_size == 0 or len(answers) == len(prompts):
            log(f"{job.variant}: {len(answers)}/{len(prompts)} answers")

    if pending:
        generate([prompts[i] for i in pending], save)
    return [answers[i] for i in range(len(prompts))]


def _stamp(model_id: str, settings: GenerationSettings) -> str:
    return json.dumps({"model": model_id, "generation": vars(settings)}, sort_keys=True)


def _adapter_id(adapter_dir: Path) -> str:
    weights = next(iter(sorted(adapter_dir.glob("adapter_model.*"))), adapter_dir / "adapter_config.json")
    stat = weights.stat()
    return f"{weights}:{stat.st_size}:{stat.st_mtime_ns}"


# ---------------------------------------------------------------- the evaluation


def evaluate_run(
    run_dir: str | Path,
    *,
    limit: int | None = None,
    overrides: list[str] | None = None,
    output_dir: str | Path | None = None,
    rescore: bool = False,
    log: Log = print,
) -> dict[str, Any]:
    """Generate with the base model and with base + adapter on held-out rows; score and save both."""

    # Cheap checks first: the run, its adapter, the eval rows, the tokenizer.
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, overrides)
    adapter_dir = resolve_adapter_dir(run_dir)
    task = get_task(cfg.task)
    _, rows = load_splits(cfg.data, task, cfg.train.seed)
    limit = limit or cfg.eval.limit
    rows = rows[:limit] if limit else rows
    info = inspect_model(cfg.model)
    prompts = eval_prompts(rows, task, info.tokenizer, info.model_type, cfg.data)
    references = [task.target(row) for row in rows]
    out = Path(output_dir) if output_dir else run_dir
    out.mkdir(parents=True, exist_ok=True)
    settings = cfg.eval.generation
    jobs = {
        "base": AnswerLog("base", answers_file(out, "base"), _stamp(info.resolved.path, settings)),
        "lora": AnswerLog("lora", answers_file(out, "lora"), _stamp(_adapter_id(adapter_dir), settings)),
    }

    started = time.perf_counter()
    if not rescore and all(len(saved_answers(job, prompts)) == len(prompts) for job in jobs.values()):
        log("every answer is saved already; scoring them")
        rescore = True
    if rescore:
        answers = {variant: saved_answers(job, prompts) for variant, job in jobs.items()}
        missing = {variant: len(prompts) - len(a) for variant, a in answers.items() if len(a) < len(prompts)}
        if missing:
            raise RunDirError(
                f"{out}: --rescore needs saved answers for all {len(prompts)} rows; missing "
                + ", ".join(f"{n} {variant}" for variant, n in missing.items())
                + " (run `loratune eval` without --rescore to generate them)"
            )
        base = [answers["base"][i] for i in range(len(prompts))]
        lora = [answers["lora"][i] for i in range(len(prompts))]
    else:
        base, lora = _generate_both(cfg, info, adapter_dir, prompts, jobs, task, log)
    generation_s = time.perf_counter() - started

    replies = {"base": base, "lora": lora}
    scored = score_both(replies, references, rows, task, cfg)
    write_predictions(out, prediction_records(rows, prompts, references, replies, scored), rows, task, replies)
    return save_metrics(cfg, len(rows), scored, out, generation_s, rescore, log)


def _generate_both(cfg: RunConfig, info: Any, adapter_dir: Path, prompts: list[str], jobs: dict[str, AnswerLog],
                   task: Task, log: Log) -> tuple[list[str], list[str]]:
    from peft import PeftModel

    loaded = load_model(cfg.model, info=info)
    batch = cfg.eval.batch_size

    def generator(model: Any) -> Generate:
        return lambda chunk, on_answer: generate_texts(model, loaded.tokenizer, loaded.model_type, chunk,
                                                       cfg.eval.generation, batch_size=batch,
                                                       task_family=task.family, on_answer=on_answer)

    base = generate_answers(jobs["base"], prompts, generator(loaded.model), batch, log)
    # The adapter is folded into the weights for generation: the same function as the unmerged
    # model, without the LoRA variant-path's extra matmuls at every decoding step.
    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).merge_and_unload()
    lora = generate_answers(jobs["lora"], prompts, generator(model), batch, log)
    return base, lora


# ---------------------------------------------------------------- what evaluation writes


def score_both(answers: dict[str, list[str]], references: list[str], rows: list[dict[str, Any]], task: Task,
               cfg: RunConfig) -> dict[str, VariantScores]:
    """Each variant's answers scored against the same references and rows."""
    return {variant: score_variant(answers[variant], references, rows, task, cfg) for variant in VARIANTS}


SCORE_DIGITS = 4
"""Per-row scores in predictions.jsonl are rounded to this many decimals: the file stays small."""


def prediction_records(rows: list[dict[str, Any]], prompts: list[str], references: list[str],
                       answers: dict[str, list[str]], scored: dict[str, VariantScores]) -> list[dict[str, Any]]:
    """One predictions.jsonl record per row: prompt, reference, both answers, each variant's
    per-row scores, and for SQL tasks what each answer's query returned beside the gold's."""
    records = []
    for i, (row, prompt, reference) in enumerate(zip(rows, prompts, references)):
        record: dict[str, Any] = {"prompt": prompt, "reference": reference}
        record.update({variant: answers[variant][i] for variant in VARIANTS})
        if row.get("db_id"):
            record["db_id"] = row["db_id"]
        record["scores"] = {variant: row_scores(scored[variant], i) for variant in VARIANTS}
        if all(scored[variant].evidence is not None for variant in VARIANTS):
            record["evidence"] = {variant: scored[variant].evidence[i] for variant in VARIANTS}  # type: ignore[index]
        records.append(record)
    return records


def row_scores(scores: VariantScores, index: int) -> dict[str, float | None]:
    """Row `index`'s value of every per-row metric (None where the metric does not apply)."""
    values = {key: each[index] for key, each in scores.per_row.items()}
    return {key: None if value is None else round(float(value), SCORE_DIGITS) for key, value in values.items()}


def write_predictions(out: Path, records: list[dict[str, Any]], rows: list[dict[str, Any]], task: Task,
                      answers: dict[str, list[str]]) -> None:
    """predictions.jsonl; TAT-QA runs add each question's uid and verdicts, and the official files."""
    if task.family == "tat-qa":
        add_verdicts(records, rows, answers, out)
    write_text(out / PREDICTIONS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def score_and_save(cfg: RunConfig, task: Task, rows: list[dict[str, Any]], references: list[str], base: list[str],
                   lora: list[str], out: Path, generation_s: float, rescore: bool, log: Log) -> dict[str, Any]:
    """Score both variants and write metrics.json/.md, for answers scored without their prompts
    (no predictions.jsonl: that needs them)."""
    scored = score_both({"base": base, "lora": lora}, references, rows, task, cfg)
    return save_metrics(cfg, len(rows), scored, out, generation_s, rescore, log)


def save_metrics(cfg: RunConfig, n: int, scored: dict[str, VariantScores], out: Path, generation_s: float,
                 rescore: bool, log: Log) -> dict[str, Any]:
    """Both variants' aggregates with paired bootstrap intervals of LoRA - base; write metrics.json/.md."""
    base_each, lora_each = scored["base"].bootstrap, scored["lora"].bootstrap
    intervals = {
        key: paired_bootstrap(base_each[key], lora_each[key], samples=cfg.eval.bootstrap_samples, seed=cfg.eval.seed)
        for key in base_each
        if key in lora_each and len(base_each[key]) == len(lora_each[key]) and base_each[key]
    }
    metrics = {
        "n": n,
        "task": cfg.task,
        "model": cfg.model,
        "generation_s": round(generation_s, 1),
        "base": scored["base"].aggregate,
        "lora": scored["lora"].aggregate,
        "intervals": intervals,
    }
    write_json(out / METRICS, metrics)
    tables = format_metrics_tables(metrics)
    write_text(out / "metrics.md", tables + "\n")
    log(f"Re-scored {n} saved answers" if rescore else
        f"Evaluated {n} held-out rows in {generation_s:.0f}s (base and LoRA)")
    log(tables)
    return metrics
