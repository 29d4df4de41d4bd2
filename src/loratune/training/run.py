"""The training run, in the order of the work:

```
check   config, run directory, data files and columns, token lengths, model source, init adapter
        (about a second; nothing loaded, nothing written: `training/check.py`)
load    model weights, LoRA layers, compiled decoder layers (train.compile)
fit     transformers' Trainer, with callbacks that record as they go (metrics.jsonl, checkpoints)
record  adapter, loratune.json, run_summary.json (`training/record.py`)
```

While it runs, status.json says so (training, then trained; failed or interrupted when it ends
otherwise), with the step, the time left and the pace; every line it logs also goes to log.txt. A
stop asked for with `loratune stop` ends it at a checkpoint (`training/status.py`).

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

from loratune import run_dir as run_files
from loratune import run_status
from loratune.config import RunConfig, save_config
from loratune.data import pad_multiple
from loratune.errors import ConfigError
from loratune.json_files import (
    append_jsonl,
    read_json_or_none,
    read_jsonl,
    write_json,
    write_text,
)
from loratune.models.load import (
    load_model,
    memory_footprint_gb,
)
from loratune.models.lora import (
    apply_lora,
    trainable_parameters_line,
)
from loratune.models.precision import (
    prepare_for_precision,
    weights_dtype_for,
)
from loratune.training.attention import run_attention
from loratune.training.batch_fit import fit_batch_size
from loratune.training.check import CheckedRun, check_run
from loratune.training.compilation import (
    compile_decision,
    compile_layers,
    uncompile_layers,
)
from loratune.training.record import eval_loss_start, save_adapter, summarize
from loratune.training.status import ProgressToStatus, StopOnRequest
from loratune.training.time_budget import TimeBudget
from loratune.training.trainer import (
    CompletionLossTrainer,
    EvalBatchFollowsTrain,
    LoratuneSeq2SeqTrainer,
    LoratuneTrainer,
    MetricsLogger,
    PaceClock,
    evaluate_fitting,
    training_arguments,
)

Log = Callable[[str], None]


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]


# ---------------------------------------------------------------- load


def load_lora_model(checked: CheckedRun, log: Log) -> tuple[Any, dict[str, str]]:
    """The base model's weights with LoRA layers on top, and the lines the original printed."""

    cfg = checked.cfg
    loaded = load_model(cfg.model, dtype=weights_dtype_for(cfg.train.weights_dtype),
                        load_in_4bit=cfg.train.load_in_4bit, info=checked.model)
    model = apply_lora(loaded.model, checked.model.model_type, cfg.lora)
    # Under bf16 autocast: frozen projections stored in bf16 once (autocast would re-cast them at
    # every step), adapters and optimizer state fp32 (bench/train_levers.py: 1.09x). Else a no-op.
    prepare_for_precision(model, checked.precision)
    if cfg.train.gradient_checkpointing:
        model.enable_input_require_grads()
    lines = {
        "trainable_line": trainable_parameters_line(model),
        "memory_line": f"Memory footprint of {cfg.model} with LoRA layers: {memory_footprint_gb(model):.2f} GB",
    }
    log(lines["trainable_line"])
    log(lines["memory_line"])
    return model, lines


def compile_for_training(checked: CheckedRun, model: Any, world_size: int, log: Log) -> bool:
    """`train.compile`: compile the decoder layers where it pays (training/compilation.py)."""

    on, why = compile_decision(checked.cfg, model_type=checked.model.model_type, device=checked.device,
                               train_rows=len(checked.train_features), world_size=world_size)
    if on:
        n = compile_layers(model, fall_back=checked.cfg.train.compile == "auto")
        why += f"; {n} layers compiled on the first step (slower step: compiling)"
    log(why)
    return on


# ---------------------------------------------------------------- fit


def build_trainer(checked: CheckedRun, model: Any, args: Any, run_dir: Path) -> Any:
    """A Trainer (Seq2SeqTrainer for T5) with dynamic padding and the recording callbacks."""
    from datasets import (
        Dataset,  # the Trainer's length-grouped sampler reads lengths from a Dataset
    )
    from transformers import DataCollatorForSeq2Seq


    cfg, tokenizer = checked.cfg, checked.model.tokenizer
    causal = checked.model.model_type == "causal"
    pad_length = cfg.data.max_source_tokens + cfg.data.max_target_tokens + 64 if causal else cfg.data.max_source_tokens
    collator = DataCollatorForSeq2Seq(
        tokenizer,
        model=model,
        label_pad_token_id=-100,
        padding="max_length" if cfg.train.pad_to_max_length else True,
        max_length=pad_length if cfg.train.pad_to_max_length else None,
        pad_to_multiple_of=None if cfg.train.pad_to_max_length else pad_multiple(cfg.train.pad_to_multiple_of, checked.device, checked.precision),
    )
    if not causal:
        trainer_cls = LoratuneSeq2SeqTrainer
    else:
        trainer_cls = CompletionLossTrainer if cfg.train.completion_only_logits else LoratuneTrainer
    return trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(checked.train_features),
        eval_dataset=Dataset.from_list(checked.eval_features),
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[MetricsLogger(run_dir / run_files.METRICS_LOG), EvalBatchFollowsTrain(), PaceClock(),
                   ProgressToStatus(run_dir)],
    )


def _keep_log_until(path: Path, step: int) -> None:
    """On resume, drop log records past the checkpoint: the Trainer logs those steps again."""
    if path.is_file():
        rows = [r for r in read_jsonl(path) if not isinstance(r.get("step"), int) or r["step"] <= step]
        write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _resume_point(run_dir: Path) -> tuple[int, int | None]:
    """The step of the checkpoint to resume from and, for a time-budgeted run, the step count it had fitted."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = get_last_checkpoint(str(run_dir / run_files.CHECKPOINTS))
    state = read_json_or_none(Path(checkpoint) / "trainer_state.json") or {}
    return int(state.get("global_step", 0)), state.get("max_steps")


def fit(trainer: Any, checked: CheckedRun, run_dir: Path, log: Log, *, is_main: bool) -> dict[str, Any]:
    """Train, resuming from the last checkpoint when asked; the loss before training is recorded too.
    A requested stop ends training at a checkpoint and raises TrainingStopped (no adapter is saved)."""
    stop = StopOnRequest(run_dir, trainer.accelerator)
    trainer.add_callback(stop)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=True if checked.resume else None)
    wall = time.perf_counter() - started
    if stop.stopped_at is not None:
        raise stop.stopped()
    # With train.keep_best the best checkpoint (lowest eval loss) is loaded at the end and its loss
    # is the run's result; otherwise the last weights and their loss. Evaluate only when training
    # never did at that point (e.g. eval_steps beyond max_steps).
    state = trainer.state
    if checked.cfg.train.keep_best:
        final_eval = state.best_metric
    else:
        final_eval = next((r["eval_loss"] for r in reversed(state.log_history)
                           if "eval_loss" in r and r.get("step") == state.global_step), None)
    if final_eval is None:
        final_eval = trainer.evaluate()["eval_loss"]
    if is_main:
        key = "eval_loss_best" if checked.cfg.train.keep_best else "eval_loss_last"
        append_jsonl(run_dir / run_files.METRICS_LOG, [{"step": state.global_step, "epoch": state.epoch, key: final_eval}])
    return {"output": output, "wall": wall, "final_eval": final_eval}


# ---------------------------------------------------------------- the run


def _log_to_run_dir(log: Log, run_dir: Path) -> Log:
    """`log`, with each line appended to the run's log.txt too, for readers in other processes."""

    def both(message: str) -> None:
        log(message)
        run_status.append_log(run_dir, message)

    return both


def train_in_run_dir(checked: CheckedRun, state: Any, log: Log) -> dict[str, Any]:
    """Load, fit and record, in the opened run directory; the run summary."""
    from transformers import set_seed

    cfg, resume, is_main = checked.cfg, checked.resume, state.is_main_process
    run_dir = cfg.run_dir
    fitted_steps = None
    if resume:
        step, fitted_steps = _resume_point(run_dir)
        if is_main:
            _keep_log_until(run_dir / run_files.METRICS_LOG, step)
    if is_main:
        save_config(cfg, run_dir / run_files.CONFIG)
        write_json(run_dir / run_files.DATA_STATS, checked.data_stats)
        log(f"Training data shape: ({len(checked.train_features)}, 2)")  # as the original printed
        log(f"Test data shape: ({checked.eval_rows}, 2)")
        for split, s in checked.data_stats.items():
            log(f"{split}: {s['rows']} rows, {s['truncated']} truncated, {s['dropped']} dropped")
        if len(checked.eval_features) < checked.eval_rows:
            log(f"eval loss on the first {len(checked.eval_features)} held-out rows (train.eval_loss_rows)")
    set_seed(cfg.train.seed)
    model, lines = load_lora_model(checked, log)
    compiled = compile_for_training(checked, model, state.num_processes, log)
    args = training_arguments(cfg, run_dir, checked.precision, checked.device, checked.model.model_type)
    if resume and cfg.train.max_minutes and fitted_steps:
        args.max_steps = int(fitted_steps)  # the budget was fitted before the kill; keep that schedule
    eval_s = None
    trainer = build_trainer(checked, model, args, run_dir)
    if compiled and hasattr(trainer, "run_attention"):

        trainer.run_attention = run_attention(checked.device, [len(f["input_ids"]) for f in checked.train_features])
        log(f"train.compile: {trainer.run_attention} attention for every batch (one graph to compile)")
    batch_fit = None
    if args.auto_find_batch_size and not resume:  # CUDA only; a resumed run keeps its checkpoint's size

        batch_fit = fit_batch_size(trainer, checked.train_features, log)
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
        log(f"eval_loss at start: {eval_loss_start(run_dir) if is_main else float('nan'):.4f}")
    if cfg.train.max_minutes and not resume:
        budget = TimeBudget(cfg.train.max_minutes, warmup_ratio=cfg.train.warmup_ratio,
                            eval_s=eval_s or 0.0, log=log, early_fit_after=3 if compiled else 1)
        budget.follow_progress(trainer.callback_handler.callbacks)
        trainer.add_callback(budget)
    fitted = {**fit(trainer, checked, run_dir, log, is_main=is_main), "batch_fit": batch_fit}
    if compiled:
        uncompile_layers(model)
    summary = summarize(checked, trainer, fitted, lines, run_dir, state.num_processes, compiled)
    if is_main:
        adapter_dir = save_adapter(checked, model, run_dir)
        write_json(run_dir / run_files.SUMMARY, summary)
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
    return summary


def train_run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, log: Log = print) -> TrainResult:
    """Train a LoRA adapter as `cfg` says and save everything a report needs in `runs/<name>/`."""
    from accelerate import PartialState

    checked = check_run(cfg, resume=resume, overwrite=overwrite)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    # Under torchrun this joins the process group (gloo on CPU, NCCL on GPUs); `cpu` must match
    # what TrainingArguments(use_cpu=...) asks of the same shared state.
    state = PartialState(cpu=checked.device == "cpu")
    is_main = state.is_main_process
    log = log if is_main else (lambda _message: None)
    run_dir = cfg.run_dir
    with run_files.open_run_dir(run_dir, resume=resume, overwrite=overwrite) if is_main else contextlib.nullcontext():
        state.wait_for_everyone()  # the others start once the run directory is ready
        if is_main:
            run_status.clear_stop(run_dir)  # a request no training answered: its process had ended
            log = _log_to_run_dir(log, run_dir)
        with run_status.phase(run_dir, "training") if is_main else contextlib.nullcontext():
            summary = train_in_run_dir(checked, state, log)
            if is_main:
                run_status.write_status(run_dir, "trained")
    return TrainResult(run_dir=run_dir, summary=summary)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
