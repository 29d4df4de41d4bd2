"""The training run, in the order of the work:

```
check   config, run directory, data files and columns, token lengths, model source, init adapter
        (about a second; nothing loaded, nothing written)
load    model weights, LoRA layers, compiled decoder layers (train.compile)
fit     transformers' Trainer, with callbacks that record as they go (metrics.jsonl, checkpoints)
record  adapter, loratune.json, run_summary.json
```

Everything that can fail cheaply fails in `check_run`, before the minutes of loading and before the
run directory exists, so a failed start leaves nothing behind that blocks the corrected retry.
Under `torchrun` / `accelerate launch` every process runs this; only the main one writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from loratune import run_dir as rd
from loratune.config import RunConfig, save_config
from loratune.errors import ConfigError
from loratune.models import ModelInfo
from loratune.records import append_jsonl, read_json_or_none, read_jsonl, write_json, write_text
from loratune.tasks import Task, get_task

Log = Callable[[str], None]


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]


@dataclass
class RunPlan:
    """What `check_run` established: everything training needs except the weights."""

    cfg: RunConfig
    task: Task
    model: ModelInfo
    device: str
    precision: str
    train_features: list[dict[str, Any]]
    eval_features: list[dict[str, Any]]
    eval_rows: int
    """Held-out rows before `train.eval_loss_rows` cut them for the loss."""
    data_stats: dict[str, Any]
    resume: bool
    overwrite: bool


# ---------------------------------------------------------------- check


def check_run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> RunPlan:
    """Every check that needs no model weights, in the order a user fixes things; writes nothing."""
    from loratune.compilation import check_compile_possible
    from loratune.data import load_splits, tokenize_rows
    from loratune.lora import resolve_adapter_dir
    from loratune.models import inspect_model
    from loratune.trainer import resolve_precision

    task = get_task(cfg.task)
    rd.check_run_dir(cfg.run_dir, resume=resume, overwrite=overwrite)
    if cfg.lora.init_adapter:
        resolve_adapter_dir(cfg.lora.init_adapter)
    train_rows, eval_rows = load_splits(cfg.data, task, cfg.train.seed)
    model = inspect_model(cfg.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(cfg, model.model_type, device)
    check_compile_possible(cfg, device)
    train_features, train_stats = tokenize_rows(train_rows, task, model.tokenizer, model.model_type, cfg.data)
    eval_features, eval_stats = tokenize_rows(eval_rows, task, model.tokenizer, model.model_type, cfg.data)
    if not train_features:
        raise ConfigError(f"{cfg.data.train}: every training row was dropped by the length limits (data.*)")
    if not eval_features:
        raise ConfigError("data.eval: every eval row was dropped by the length limits (data.*)")
    n_eval = len(eval_features)
    if cfg.train.eval_loss_rows and cfg.train.eval_loss_rows < n_eval:
        eval_features = eval_features[: cfg.train.eval_loss_rows]
    return RunPlan(
        cfg=cfg, task=task, model=model, device=device, precision=precision,
        train_features=train_features, eval_features=eval_features, eval_rows=n_eval,
        data_stats={"train": train_stats.as_dict(), "eval": eval_stats.as_dict()},
        resume=resume, overwrite=overwrite,
    )


# ---------------------------------------------------------------- load


def load_lora_model(plan: RunPlan, log: Log) -> tuple[Any, dict[str, str]]:
    """The base model's weights with LoRA layers on top, and the lines the original printed."""
    from loratune.lora import apply_lora, prepare_for_precision, trainable_parameters_line
    from loratune.models import load_model, memory_footprint_gb
    from loratune.precision import weights_dtype_for

    cfg = plan.cfg
    loaded = load_model(cfg.model, dtype=weights_dtype_for(cfg.train.weights_dtype),
                        load_in_4bit=cfg.train.load_in_4bit, info=plan.model)
    model = apply_lora(loaded.model, plan.model.model_type, cfg.lora)
    # Under bf16 autocast: frozen projections stored in bf16 once (autocast would re-cast them at
    # every step), adapters and optimizer state fp32 (bench/train_levers.py: 1.09x). Else a no-op.
    prepare_for_precision(model, plan.precision)
    if cfg.train.gradient_checkpointing:
        model.enable_input_require_grads()
    lines = {
        "trainable_line": trainable_parameters_line(model),
        "memory_line": f"Memory footprint of {cfg.model} with LoRA layers: {memory_footprint_gb(model):.2f} GB",
    }
    log(lines["trainable_line"])
    log(lines["memory_line"])
    return model, lines


def compile_for_training(plan: RunPlan, model: Any, world_size: int, log: Log) -> bool:
    """`train.compile`: compile the decoder layers where it pays (loratune/compilation.py)."""
    from loratune.compilation import compile_decision, compile_layers

    on, why = compile_decision(plan.cfg, model_type=plan.model.model_type, device=plan.device,
                               train_rows=len(plan.train_features), world_size=world_size)
    if on:
        n = compile_layers(model, fall_back=plan.cfg.train.compile == "auto")
        why += f"; {n} layers compiled on the first step (slower step: compiling)"
    log(why)
    return on


# ---------------------------------------------------------------- fit


def build_trainer(plan: RunPlan, model: Any, args: Any, run_dir: Path) -> Any:
    """A Trainer (Seq2SeqTrainer for T5) with dynamic padding and the recording callbacks."""
    from datasets import Dataset  # the Trainer's length-grouped sampler reads lengths from a Dataset
    from transformers import DataCollatorForSeq2Seq

    from loratune.data import pad_multiple
    from loratune.trainer import (
        CompletionLossTrainer, EvalBatchFollowsTrain, LoratuneSeq2SeqTrainer, LoratuneTrainer, MetricsLogger,
        PaceClock,
    )

    cfg, tokenizer = plan.cfg, plan.model.tokenizer
    causal = plan.model.model_type == "causal"
    pad_length = cfg.data.max_source_tokens + cfg.data.max_target_tokens + 64 if causal else cfg.data.max_source_tokens
    collator = DataCollatorForSeq2Seq(
        tokenizer,
        model=model,
        label_pad_token_id=-100,
        padding="max_length" if cfg.train.pad_to_max_length else True,
        max_length=pad_length if cfg.train.pad_to_max_length else None,
        pad_to_multiple_of=None if cfg.train.pad_to_max_length else pad_multiple(cfg.train.pad_to_multiple_of, plan.device, plan.precision),
    )
    if not causal:
        trainer_cls = LoratuneSeq2SeqTrainer
    else:
        trainer_cls = CompletionLossTrainer if cfg.train.completion_only_logits else LoratuneTrainer
    return trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(plan.train_features),
        eval_dataset=Dataset.from_list(plan.eval_features),
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[MetricsLogger(run_dir / rd.METRICS_LOG), EvalBatchFollowsTrain(), PaceClock()],
    )


def _keep_log_until(path: Path, step: int) -> None:
    """On resume, drop log records past the checkpoint: the Trainer logs those steps again."""
    if path.is_file():
        rows = [r for r in read_jsonl(path) if not isinstance(r.get("step"), int) or r["step"] <= step]
        write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _resume_point(run_dir: Path) -> tuple[int, int | None]:
    """The step of the checkpoint to resume from and, for a time-budgeted run, the step count it had fitted."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = get_last_checkpoint(str(run_dir / rd.CHECKPOINTS))
    state = read_json_or_none(Path(checkpoint) / "trainer_state.json") or {}
    return int(state.get("global_step", 0)), state.get("max_steps")


def fit(trainer: Any, plan: RunPlan, run_dir: Path, log: Log, *, is_main: bool) -> dict[str, Any]:
    """Train, resuming from the last checkpoint when asked; the loss before training is recorded too."""
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=True if plan.resume else None)
    wall = time.perf_counter() - started
    # With train.keep_best the best checkpoint (lowest eval loss) is loaded at the end and its loss
    # is the run's result; otherwise the last weights and their loss. Evaluate only when training
    # never did at that point (e.g. eval_steps beyond max_steps).
    state = trainer.state
    if plan.cfg.train.keep_best:
        final_eval = state.best_metric
    else:
        final_eval = next((r["eval_loss"] for r in reversed(state.log_history)
                           if "eval_loss" in r and r.get("step") == state.global_step), None)
    if final_eval is None:
        final_eval = trainer.evaluate()["eval_loss"]
    if is_main:
        key = "eval_loss_best" if plan.cfg.train.keep_best else "eval_loss_last"
        append_jsonl(run_dir / rd.METRICS_LOG, [{"step": state.global_step, "epoch": state.epoch, key: final_eval}])
    return {"output": output, "wall": wall, "final_eval": final_eval}


# ---------------------------------------------------------------- record


def save_adapter(plan: RunPlan, model: Any, run_dir: Path) -> Path:
    """The adapter, its tokenizer, and loratune.json: what serving and evaluation need to use it."""
    cfg = plan.cfg
    adapter_dir = run_dir / rd.ADAPTER
    model.save_pretrained(str(adapter_dir))
    plan.model.tokenizer.save_pretrained(str(adapter_dir))
    write_json(adapter_dir / "loratune.json", {
        "name": cfg.name,
        "task": cfg.task,
        "base_model": cfg.model,
        "base_path": plan.model.resolved.path,
        "model_type": plan.model.model_type,
        "use_chat_template": cfg.data.use_chat_template,
        "system_prompt": cfg.data.system_prompt,
        "max_source_tokens": cfg.data.max_source_tokens,
        "max_target_tokens": cfg.data.max_target_tokens,
        "init_adapter": cfg.lora.init_adapter,
    })
    return adapter_dir


def _eval_loss_start(run_dir: Path) -> float | None:
    """The loss before training, as logged at step 0 (kept across resumes)."""
    for row in read_jsonl(run_dir / rd.METRICS_LOG) if (run_dir / rd.METRICS_LOG).is_file() else []:
        if row.get("step") == 0 and isinstance(row.get("eval_loss"), (int, float)):
            return float(row["eval_loss"])
    return None


def summarize(plan: RunPlan, trainer: Any, fitted: dict[str, Any], lines: dict[str, str], run_dir: Path,
              world_size: int, compiled: bool = False) -> dict[str, Any]:
    from loratune.trainer import PaceClock

    cfg, wall = plan.cfg, fitted["wall"]
    clock = next((c for c in trainer.callback_handler.callbacks if isinstance(c, PaceClock)), None)
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    return {
        "model": cfg.model,
        "task": cfg.task,
        "model_type": plan.model.model_type,
        **lines,
        "train_rows": len(plan.train_features),
        "eval_rows": plan.eval_rows,
        "eval_loss_rows": len(plan.eval_features),
        "steps": trainer.state.global_step,
        "max_minutes": cfg.train.max_minutes,
        "wall_time_s": round(wall, 1),
        "train_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "compiled": compiled,
        # The first step pays one-time costs (compiling, with train.compile); the pace after it:
        "first_step_s": clock.first_step_s() if clock else None,
        "tokens_per_s_after_first_step": clock.tokens_per_s_after_first_step() if clock else None,
        "eval_loss_start": _eval_loss_start(run_dir),
        "eval_loss_end": fitted["final_eval"],
        "train_loss": fitted["output"].training_loss,
        "init_adapter": cfg.lora.init_adapter,
        "precision": plan.precision,
        "device": plan.device,
        # The rows per step training ran with: the configured size, or what `auto` found to fit.
        "batch_size": trainer.state.train_batch_size or trainer.args.per_device_train_batch_size,
        # train.batch_size: auto on CUDA: the probes that found it, and the Trainer's out-of-memory
        # restarts after them (each one a smaller batch; 0 when the probed size fitted).
        "batch_fit": fitted.get("batch_fit"),
        "oom_restarts": clock.begins - 1 if clock and clock.begins else None,
        "peak_gpu_memory_gb": (round(torch.cuda.max_memory_allocated() / 1e9, 2)
                               if plan.device == "cuda" else None),
        "world_size": world_size,
        "resumed": plan.resume,
    }


# ---------------------------------------------------------------- the run


def train_run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, log: Log = print) -> TrainResult:
    """Train a LoRA adapter as `cfg` says and save everything a report needs in `runs/<name>/`."""
    from accelerate import PartialState
    from transformers import set_seed

    from loratune.compilation import uncompile_layers
    from loratune.trainer import evaluate_fitting, training_arguments

    plan = check_run(cfg, resume=resume, overwrite=overwrite)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    # Under torchrun this joins the process group (gloo on CPU, NCCL on GPUs); `cpu` must match
    # what TrainingArguments(use_cpu=...) asks of the same shared state.
    state = PartialState(cpu=plan.device == "cpu")
    is_main = state.is_main_process
    log = log if is_main else (lambda _message: None)
    run_dir = cfg.run_dir
    with rd.open_run_dir(run_dir, resume=resume, overwrite=overwrite) if is_main else contextlib.nullcontext():
        state.wait_for_everyone()  # the others start once the run directory is ready
        fitted_steps = None
        if resume:
            step, fitted_steps = _resume_point(run_dir)
            if is_main:
                _keep_log_until(run_dir / rd.METRICS_LOG, step)
        if is_main:
            save_config(cfg, run_dir / rd.CONFIG)
            write_json(run_dir / rd.DATA_STATS, plan.data_stats)
            log(f"Training data shape: ({len(plan.train_features)}, 2)")  # as the original printed
            log(f"Test data shape: ({plan.eval_rows}, 2)")
            for split, s in plan.data_stats.items():
                log(f"{split}: {s['rows']} rows, {s['truncated']} truncated, {s['dropped']} dropped")
            if len(plan.eval_features) < plan.eval_rows:
                log(f"eval loss on the first {len(plan.eval_features)} held-out rows (train.eval_loss_rows)")
        set_seed(cfg.train.seed)
        model, lines = load_lora_model(plan, log)
        compiled = compile_for_training(plan, model, state.num_processes, log)
        args = training_arguments(cfg, run_dir, plan.precision, plan.device, plan.model.model_type)
        if resume and cfg.train.max_minutes and fitted_steps:
            args.max_steps = int(fitted_steps)  # the budget was fitted before the kill; keep that schedule
        eval_s = None
        trainer = build_trainer(plan, model, args, run_dir)
        if compiled and hasattr(trainer, "run_attention"):
            from loratune.attention import run_attention

            trainer.run_attention = run_attention(plan.device, [len(f["input_ids"]) for f in plan.train_features])
            log(f"train.compile: {trainer.run_attention} attention for every batch (one graph to compile)")
        batch_fit = None
        if args.auto_find_batch_size and not resume:  # CUDA only; a resumed run keeps its checkpoint's size
            from loratune.batch_fit import fit_batch_size

            batch_fit = fit_batch_size(trainer, plan.train_features, log)
        if not resume:
            log("Eval loss before training...")
            started = time.perf_counter()
            evaluate_fitting(trainer)  # logged at step 0 into metrics.jsonl
            eval_s = time.perf_counter() - started
            if state.num_processes > 1:
                # evaluate() has accelerate mark the model as prepared (for evaluation), and train()
                # then skips wrapping it in DistributedDataParallel: each process would train alone
                # on its share of the data. Clear the mark so train() wraps it.
                trainer.model._is_accelerate_prepared = False
                trainer.model_wrapped = trainer.model
            log(f"eval_loss at start: {_eval_loss_start(run_dir) if is_main else float('nan'):.4f}")
        if cfg.train.max_minutes and not resume:
            from loratune.time_budget import TimeBudget

            trainer.add_callback(TimeBudget(cfg.train.max_minutes, warmup_ratio=cfg.train.warmup_ratio,
                                            eval_s=eval_s or 0.0, log=log, early_fit_after=3 if compiled else 1))
        fitted = {**fit(trainer, plan, run_dir, log, is_main=is_main), "batch_fit": batch_fit}
        if compiled:
            uncompile_layers(model)
        summary = summarize(plan, trainer, fitted, lines, run_dir, state.num_processes, compiled)
        if is_main:
            adapter_dir = save_adapter(plan, model, run_dir)
            write_json(run_dir / rd.SUMMARY, summary)
            start = summary["eval_loss_start"]
            log(
                f"Trained {summary['steps']} steps in {fitted['wall']:.0f}s ({summary['tokens_per_s']} tok/s); "
                f"eval loss {'n/a' if start is None else f'{start:.4f}'} -> {fitted['final_eval']:.4f}; "
                f"adapter saved to {adapter_dir}"
            )
            if cfg.train.batch_size == "auto" or summary["peak_gpu_memory_gb"] is not None:
                log(f"batch size {summary['batch_size']} rows per step"
                    + (" (train.batch_size: auto)" if cfg.train.batch_size == "auto" else "")
                    + ("" if summary["peak_gpu_memory_gb"] is None
                       else f"; peak GPU memory {summary['peak_gpu_memory_gb']:.2f} GB"))
    if math.isnan(fitted["final_eval"]):
        raise ConfigError("train.lr: the eval loss is NaN; lower the learning rate")
    return TrainResult(run_dir=run_dir, summary=summary)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
