"""Accuracy against training minutes: score the checkpoints a run saved, after training.

Evaluating while training would slow the run it measures, so we wait until it is done and
then generate for a fixed subset of held-out rows (the first `rows` eval rows) with the base
model and with each saved checkpoint (`checkpoints/checkpoint-N`, each a peft adapter). Each
checkpoint is placed at the training minute it was saved, read from the run's own records,
so a user sees what another few minutes of training would buy.
Writes `progress.json` and `plots/accuracy_vs_time.png` in the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from loratune.data import eval_prompts, load_splits
from loratune.errors import AdapterError
from loratune.evaluation.base_vs_lora import load_run_config, score_answers
from loratune.evaluation.metrics import headline_metric
from loratune.inference.generate import generate_texts
from loratune.json_files import read_json, read_json_or_none, read_jsonl, write_json
from loratune.models.load import load_model
from loratune.models.lora import resolve_adapter_dir
from loratune.tasks import get_task

Log = Callable[[str], None]


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every saved checkpoint that holds an adapter, in step order."""
    found = []
    for path in Path(run_dir, "checkpoints").glob("checkpoint-*"):
        step = path.name.rsplit("-", 1)[-1]
        if step.isdigit() and (path / "adapter_config.json").is_file():
            found.append((int(step), path))
    return sorted(found)


def _interpolate(step: int, known: list[tuple[float, float]]) -> float | None:
    """Elapsed seconds at `step` from (step, seconds) records: exact, linear between the two
    records around it, or extrapolated at the last record's pace past the end."""
    if not known:
        return None
    for (s0, t0), (s1, t1) in zip(known, known[1:]):
        if s0 <= step <= s1:
            return t0 if s1 == s0 else t0 + (t1 - t0) * (step - s0) / (s1 - s0)
    last_step, last_s = known[-1]
    if step <= known[0][0]:
        first_step, first_s = known[0]
        return first_s * step / first_step if first_step > 0 else first_s
    return last_s * step / last_step if last_step > 0 else last_s


def step_seconds(run_dir: str | Path, steps: Sequence[int]) -> tuple[dict[int, float], str]:
    """Training seconds at which each step was reached, and where that figure came from.

    Prefers the `elapsed_s` the Trainer log records carry (metrics.jsonl); else spreads
    run_summary.json's wall time evenly over its steps; else uses checkpoint file times
    counted from config.yaml, which is written when the run starts.
    """
    run_dir = Path(run_dir)
    log_path = run_dir / "metrics.jsonl"
    records = read_jsonl(log_path) if log_path.is_file() else []
    timed: dict[float, float] = {}
    for record in records:
        step, elapsed = record.get("step"), record.get("elapsed_s")
        if isinstance(step, (int, float)) and isinstance(elapsed, (int, float)):
            timed[float(step)] = max(float(elapsed), timed.get(float(step), 0.0))
    if timed:
        known = sorted(timed.items())
        return {s: float(_interpolate(s, known)) for s in steps}, "metrics.jsonl elapsed_s"
    summary = read_json_or_none(run_dir / "run_summary.json") or {}
    if summary.get("steps") and summary.get("wall_time_s"):
        pace = float(summary["wall_time_s"]) / float(summary["steps"])
        return {s: s * pace for s in steps}, "run_summary.json wall time, spread evenly over steps"
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise AdapterError(f"{run_dir}: no metrics.jsonl times, run_summary.json or config.yaml to time the run by")
    start = config.stat().st_mtime
    out = {}
    for step in steps:
        state = run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
        out[step] = max(0.0, state.stat().st_mtime - start) if state.is_file() else float("nan")
    return out, "checkpoint file times since config.yaml"


def _best_checkpoint_step(checkpoints: list[tuple[int, Path]]) -> int | None:
    """The step whose weights the final adapter holds when the Trainer reloaded the best
    checkpoint at the end (trainer_state.json's best_model_checkpoint), else None."""
    if not checkpoints:
        return None
    state_path = checkpoints[-1][1] / "trainer_state.json"
    if not state_path.is_file():
        return None
    best = read_json(state_path).get("best_model_checkpoint")
    tail = Path(best).name.rsplit("-", 1)[-1] if best else ""
    return int(tail) if tail.isdigit() else None


def headline_accuracy(scores: dict[str, Any]) -> tuple[float, str]:
    """The headline (`metrics.headline_metric`): real-database execution accuracy when the rows
    have databases, else test-suite execution accuracy on synthesized databases; with its name."""
    metric = headline_metric(scores)
    return float(scores[metric]), metric


def evaluate_progress(
    run_dir: str | Path,
    *,
    rows: int = 40,
    overrides: list[str] | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Score the base model and every saved checkpoint (plus the final adapter when no
    checkpoint holds its weights) on the first `rows` eval rows; write progress.json
    (`reporting.plots.plot_accuracy_vs_time` draws it). Returns what progress.json holds."""
    from peft import PeftModel


    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, overrides)
    task = get_task(cfg.task)
    if task.family != "sql":
        raise AdapterError(f"{run_dir}: accuracy against time needs a SQL task; this run's task is {cfg.task}")
    checkpoints = list_checkpoints(run_dir)
    summary = read_json_or_none(run_dir / "run_summary.json") or {}
    final_step = int(summary.get("steps") or (checkpoints[-1][0] if checkpoints else 0))
    # The Trainer records its best checkpoint either way; only a run that kept it ended there.
    best_step = _best_checkpoint_step(checkpoints) if cfg.train.keep_best else None
    adapters = list(checkpoints)
    final_is_saved = best_step is not None or any(step == final_step for step, _ in checkpoints)
    if not final_is_saved and (run_dir / "adapter" / "adapter_config.json").is_file():
        adapters.append((final_step, resolve_adapter_dir(run_dir)))
    if not adapters:
        raise AdapterError(
            f"{run_dir}: no checkpoints/checkpoint-N or adapter/ to evaluate; train with train.eval_steps "
            "set and train.save_total_limit at least the number of evaluations"
        )

    _, eval_rows = load_splits(cfg.data, task, cfg.train.seed)
    eval_rows = eval_rows[:rows]
    loaded = load_model(cfg.model)
    prompts = eval_prompts(eval_rows, task, loaded.tokenizer, loaded.model_type, cfg.data)
    references = [task.target(row) for row in eval_rows]

    def score(model: Any, label: str) -> dict[str, Any]:
        texts = generate_texts(model, loaded.tokenizer, loaded.model_type, prompts, cfg.eval.generation,
                               batch_size=cfg.eval.batch_size, task_family=task.family)
        scores, _ = score_answers(texts, references, eval_rows, task, cfg)
        accuracy, metric = headline_accuracy(scores)
        log(f"{label}: {metric} {accuracy:.3f} on {len(eval_rows)} rows")
        return {"accuracy": accuracy, "metric": metric, "sql_valid": scores.get("sql_valid"),
                "execution_accuracy": scores.get("execution_accuracy"),
                "execution_accuracy_real_db": scores.get("execution_accuracy_real_db")}

    base = score(loaded.model, "base")
    seconds, time_source = step_seconds(run_dir, [step for step, _ in adapters])
    points = []
    model = None
    for step, path in adapters:
        name = f"step{step}"
        # One base model in memory; each checkpoint's adapter is loaded beside it, used, dropped.
        if model is None:
            model = PeftModel.from_pretrained(loaded.model, str(path), adapter_name=name)
        else:
            model.load_adapter(str(path), adapter_name=name)
            model.set_adapter(name)
        point = {"step": step, "minutes": round(seconds[step] / 60, 3), "adapter": str(path), **score(model, name)}
        points.append(point)
        for previous in [n for n in model.peft_config if n != name]:
            model.delete_adapter(previous)

    progress = {
        "rows": len(eval_rows),
        "metric": base["metric"],
        "time_source": time_source,
        "final_step": final_step,
        "final_adapter_step": best_step if best_step is not None else final_step,
        "base": base,
        "points": points,
    }
    write_json(run_dir / "progress.json", progress)
    log(f"Wrote {run_dir / 'progress.json'}")
    return progress


