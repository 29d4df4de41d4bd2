"""The training run: data -> LoRA model -> transformers' Trainer -> adapter in `runs/<name>/`.

We build on Trainer / Seq2SeqTrainer instead of a hand-written loop so that resume, gradient
accumulation, schedules, checkpointing, logging and multi-GPU (accelerate / torchrun) come from
the library the field already trusts. What loratune adds is the speed-relevant defaults (bf16
autocast, dynamic padding, length-grouped batches), completion-only loss for causal models, and
the records a report needs.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import Trainer, TrainerCallback

from loratune.config import RunConfig, save_config
from loratune.errors import AdapterError, ConfigError
from loratune.tasks import get_task

Log = Callable[[str], None]


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]


class MetricsLogger(TrainerCallback):
    """Appends every Trainer log to `metrics.jsonl` (one JSON object per line) for plots and reports."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs:
            self.write({"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs})


class CompletionLossTrainer(Trainer):
    """Trainer for causal LMs that projects to the vocabulary only where the loss needs it.

    Rows are a prompt (labels -100) followed by the answer, and most tokens are prompt. The
    vocabulary projection (49k x 576 for SmolLM2) is a fifth of the model's compute and its
    logits dominate memory, so we ask the model for logits from the earliest answer position of
    the batch on (`logits_to_keep`) and compute the same token-level cross-entropy ourselves.
    """

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        labels = inputs.get("labels")
        targets_all = labels[:, 1:] if labels is not None else None
        if labels is None or self.label_smoother is not None or not bool((targets_all != -100).any()):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        width = labels.shape[1]
        # Position p predicts token p + 1; `first` is the earliest position with a target.
        first = int((targets_all != -100).any(dim=0).nonzero()[0])
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=width - first)
        logits = outputs.logits[:, :-1].float()
        targets = labels[:, first + 1 :]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
        )
        # Same normalisation as transformers' own causal-LM loss: by the label tokens of the whole
        # accumulated batch when the Trainer gives that count, else by this batch's.
        denominator = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
        loss = loss / denominator
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


def resolve_precision(cfg: RunConfig, kind: str, device: str) -> str:
    """`auto` -> bf16 where the hardware supports it (CPU included), else fp32. Never fp16 for T5."""
    from loratune.models import bf16_supported

    precision = cfg.train.precision
    if precision == "fp16" and kind == "seq2seq":
        raise ConfigError("train.precision: fp16 overflows in T5 models; use bf16, fp32 or auto")
    if precision == "fp16" and device != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA GPU; use bf16, fp32 or auto")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if precision == "bf16" and not bf16_supported(device):
        raise ConfigError(f"train.precision: bf16 is not supported on this {device}; use fp32 or auto")
    return precision


def _sampling_args(group_by_length: bool) -> dict[str, Any]:
    # transformers 5 replaced `group_by_length` with `train_sampling_strategy`; support both.
    params = inspect.signature(__import__("transformers").TrainingArguments.__init__).parameters
    if "train_sampling_strategy" in params:
        return {"train_sampling_strategy": "group_by_length" if group_by_length else "random"}
    return {"group_by_length": group_by_length}


def training_arguments(cfg: RunConfig, run_dir: Path, precision: str, device: str, kind: str) -> Any:
    """Map loratune's train settings onto transformers' (Seq2Seq)TrainingArguments."""
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    t = cfg.train
    strategy = "steps" if t.eval_steps else "epoch"
    auto_batch = t.batch_size == "auto"
    if auto_batch and device != "cuda":
        batch_size = 8  # finding the largest batch by trial needs CUDA OOM errors; on CPU use 8
    else:
        batch_size = 64 if auto_batch else int(t.batch_size)
    args_cls = Seq2SeqTrainingArguments if kind == "seq2seq" else TrainingArguments
    warmup_key = "warmup_steps" if "warmup_ratio" not in inspect.signature(args_cls.__init__).parameters else "warmup_ratio"
    report_to = ["tensorboard"] if _have("tensorboard") else []
    if report_to:  # transformers 5 reads the TensorBoard directory from the environment
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    return args_cls(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        weight_decay=t.weight_decay,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=strategy,
        eval_steps=t.eval_steps,
        save_strategy=strategy,
        save_steps=t.eval_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        auto_find_batch_size=auto_batch and device == "cuda",
        seed=t.seed,
        data_seed=t.seed,
        report_to=report_to,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        **{warmup_key: t.warmup_ratio},
        **_sampling_args(t.group_by_length),
        **_renamed("gradient_checkpointing", "activation_checkpointing", t.gradient_checkpointing, args_cls),
    )


def _renamed(old: str, new: str, value: Any, args_cls: type) -> dict[str, Any]:
    # transformers 5 renamed some arguments; pass whichever this version knows.
    return {new if new in inspect.signature(args_cls.__init__).parameters else old: value}


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def prepare_run_dir(cfg: RunConfig, *, resume: bool, overwrite: bool) -> Path:
    """Create `runs/<name>/`, refusing to clobber a finished run unless asked."""
    run_dir = cfg.run_dir
    finished = (run_dir / "adapter" / "adapter_config.json").is_file()
    if resume:
        if not (run_dir / "checkpoints").is_dir():
            raise AdapterError(f"{run_dir}: nothing to resume (no checkpoints/); start it without --resume")
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            state = "a trained adapter" if finished else "files from an earlier run"
            raise AdapterError(
                f"{run_dir}: already holds {state}; choose another name (--set name=NEW), "
                "continue it with --resume, or replace it with --overwrite"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train_run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, log: Log = print) -> TrainResult:
    """Train a LoRA adapter as `cfg` says and save everything a report needs in `runs/<name>/`."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, set_seed

    from loratune.data import load_splits, tokenize_rows
    from loratune.lora import apply_lora, trainable_parameters_line
    from loratune.models import load_model, memory_footprint_gb

    task = get_task(cfg.task)
    if cfg.lora.init_adapter:  # fail before minutes of model loading, not after
        from loratune.lora import resolve_adapter_dir

        resolve_adapter_dir(cfg.lora.init_adapter)
    run_dir = prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
    save_config(cfg, run_dir / "config.yaml")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    weights_dtype = torch.bfloat16 if cfg.train.weights_dtype == "bf16" else torch.float32
    loaded = load_model(cfg.model, dtype=weights_dtype, load_in_4bit=cfg.train.load_in_4bit)
    precision = resolve_precision(cfg, loaded.kind, device)
    tokenizer = loaded.tokenizer

    train_rows, eval_rows = load_splits(cfg.data, task, cfg.train.seed)
    train_features, train_stats = tokenize_rows(train_rows, task, tokenizer, loaded.kind, cfg.data)
    eval_features, eval_stats = tokenize_rows(eval_rows, task, tokenizer, loaded.kind, cfg.data)

    if not train_features:
        raise ConfigError(f"{cfg.data.train}: every training row was dropped by the length limits (data.*)")
    if not eval_features:
        raise ConfigError("data.eval: every eval row was dropped by the length limits (data.*)")
    # The original printed the DataFrame shapes (two columns: prompt and target).
    log(f"Training data shape: ({len(train_features)}, 2)")
    log(f"Test data shape: ({len(eval_features)}, 2)")
    n_eval = len(eval_features)
    if cfg.train.eval_loss_rows and cfg.train.eval_loss_rows < n_eval:
        eval_features = eval_features[: cfg.train.eval_loss_rows]
        log(f"eval loss on the first {len(eval_features)} held-out rows (train.eval_loss_rows)")
    stats = {"train": train_stats.as_dict(), "eval": eval_stats.as_dict()}
    (run_dir / "data_stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    for split, s in stats.items():
        log(f"{split}: {s['rows']} rows, {s['truncated']} truncated, {s['dropped']} dropped")

    model = apply_lora(loaded.model, loaded.kind, cfg.lora)
    if cfg.train.gradient_checkpointing:
        model.enable_input_require_grads()
    param_line = trainable_parameters_line(model)
    memory_line = f"Memory footprint of {cfg.model} with LoRA layers: {memory_footprint_gb(model):.2f} GB"
    log(param_line)
    log(memory_line)

    from datasets import Dataset  # Trainer's length-grouped sampler reads lengths from a Dataset

    train_ds = Dataset.from_list(train_features)
    eval_ds = Dataset.from_list(eval_features)
    pad_length = cfg.data.max_source_tokens + cfg.data.max_target_tokens + 64 if loaded.kind == "causal" else None
    collator = DataCollatorForSeq2Seq(
        tokenizer,
        model=model,
        label_pad_token_id=-100,
        padding="max_length" if cfg.train.pad_to_max_length else True,
        max_length=(pad_length or cfg.data.max_source_tokens) if cfg.train.pad_to_max_length else None,
        pad_to_multiple_of=None,
    )
    args = training_arguments(cfg, run_dir, precision, device, loaded.kind)
    metrics_log = MetricsLogger(run_dir / "metrics.jsonl")
    if loaded.kind == "seq2seq":
        trainer_cls = Seq2SeqTrainer
    else:
        trainer_cls = CompletionLossTrainer if cfg.train.completion_only_logits else Trainer
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[metrics_log],
    )

    eval_loss_start = None
    if not resume:
        log("Eval loss before training...")
        eval_loss_start = trainer.evaluate()["eval_loss"]
        log(f"eval_loss at start: {eval_loss_start:.4f}")
    started = time.perf_counter()
    checkpoint = _latest_checkpoint(run_dir) if resume else None
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    wall = time.perf_counter() - started
    # The best checkpoint (lowest eval loss) is loaded at the end; its loss is the run's result.
    # Evaluate only when training never did (e.g. eval_steps beyond max_steps).
    final_eval = trainer.state.best_metric
    if final_eval is None:
        final_eval = trainer.evaluate()["eval_loss"]
    metrics_log.write({"step": trainer.state.global_step, "epoch": trainer.state.epoch, "eval_loss_best": final_eval})

    adapter_dir = run_dir / "adapter"
    model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    meta = {
        "name": cfg.name,
        "task": cfg.task,
        "base_model": cfg.model,
        "base_path": loaded.path,
        "kind": loaded.kind,
        "use_chat_template": cfg.data.use_chat_template,
        "system_prompt": cfg.data.system_prompt,
        "max_source_tokens": cfg.data.max_source_tokens,
        "max_target_tokens": cfg.data.max_target_tokens,
        "init_adapter": cfg.lora.init_adapter,
    }
    (adapter_dir / "loratune.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    summary = {
        "model": cfg.model,
        "task": cfg.task,
        "kind": loaded.kind,
        "trainable_line": param_line,
        "memory_line": memory_line,
        "train_rows": len(train_features),
        "eval_rows": n_eval,
        "eval_loss_rows": len(eval_features),
        "steps": trainer.state.global_step,
        "wall_time_s": round(wall, 1),
        "train_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "eval_loss_start": eval_loss_start,
        "eval_loss_end": final_eval,
        "train_loss": output.training_loss,
        "init_adapter": cfg.lora.init_adapter,
        "precision": precision,
        "device": device,
    }
    if resume and (run_dir / "run_summary.json").is_file():
        previous = json.loads((run_dir / "run_summary.json").read_text(encoding="utf-8"))
        summary["eval_loss_start"] = previous.get("eval_loss_start")
    (run_dir / "run_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    start_text = "n/a" if summary["eval_loss_start"] is None else f"{summary['eval_loss_start']:.4f}"
    log(
        f"Trained {summary['steps']} steps in {wall:.0f}s ({summary['tokens_per_s']} tok/s); "
        f"eval loss {start_text} -> {final_eval:.4f}; adapter saved to {adapter_dir}"
    )
    if math.isnan(final_eval):
        raise ConfigError("train.lr: the eval loss is NaN; lower the learning rate")
    return TrainResult(run_dir=run_dir, summary=summary)


def _latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = sorted(
        (run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
    )
    return checkpoints[-1] if checkpoints else None


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
