"""What loratune adds to transformers' Trainer: completion-only logits, a log written as it goes, a
wall-clock budget, and the mapping from loratune's settings to TrainingArguments.

We build on Trainer / Seq2SeqTrainer instead of a hand-written loop so that resume, gradient
accumulation, schedules, checkpointing and multi-process training (torchrun / accelerate) come from
the library the field already trusts.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import Trainer, TrainerCallback

from loratune.compilation import EagerEvaluation
from loratune.config import RunConfig
from loratune.errors import ConfigError
from loratune.records import append_jsonl

Log = Callable[[str], None]


class SeededLengthGroupedSampler(torch.utils.data.Sampler):
    """transformers' length-grouped order, drawn from `seed + epoch` instead of the global RNG.

    The Trainer restores the global RNG from a checkpoint, but the epoch's order was drawn at the
    start of that epoch, so a resumed run would see other batches than the run it continues.
    Seeding by epoch (as accelerate's seedable random sampler does) replays the same order.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class SeededSampling:
    """Mixed into loratune's Trainers: length-grouped batches that a resumed run replays exactly."""

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if getattr(self.args, "train_sampling_strategy", None) != "group_by_length" or "input_ids" not in getattr(
                dataset, "column_names", ()):
            return super()._get_train_sampler(train_dataset)
        lengths = [len(ids) for ids in dataset["input_ids"]]
        # Grouped by the global batch, so N processes x batch B see the rows one process x batch
        # N*B sees (accelerate hands each process its slice of every global batch).
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return SeededLengthGroupedSampler(lengths, batch, self.args.data_seed or self.args.seed)


class WidthAttention:
    """Mixed into the causal Trainers: eager attention for short CPU batches, SDPA for long ones
    (`attention.attention_for`: SDPA's CPU backward is slow for short rows; bench/train_levers.py),
    or one implementation for the whole run when `run_attention` is set (compiled layers)."""

    run_attention: str | None = None

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        from loratune.attention import use_attention_for

        # self.model is the unwrapped model, so this is safe under DistributedDataParallel.
        use_attention_for(self.model, self.args.device.type, inputs["input_ids"].shape[1], self.run_attention)
        return super().compute_loss(model, inputs, *args, **kwargs)


class LoratuneTrainer(EagerEvaluation, WidthAttention, SeededSampling, Trainer):
    """transformers' Trainer with seeded length-grouped sampling and per-batch attention."""


class CompletionLoss:
    """Mixed into the causal Trainer: the loss over the answer tokens only (`loratune.loss`).

    Rows are a prompt (labels -100) followed by the answer, and most tokens are prompt. The
    vocabulary projection (49k x 576 for SmolLM2) is a fifth of the model's compute and its
    logits dominate memory, so only answer positions are projected: in training, chunk by chunk
    with the gradient computed as it goes (`vocab_cross_entropy`: 1.16-1.20x useful tok/s under
    bf16, 1.09-1.34x in fp32, bench/fused_loss.py); elsewhere (evaluation, which needs the logits;
    models `fused_loss_supported` refuses) from the earliest answer position on.
    """

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        from loratune.loss import completion_loss_sum, fused_loss_supported

        labels = inputs.get("labels")
        if labels is None or self.label_smoother is not None or not bool((labels[:, 1:] != -100).any()):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # Outputs asked for (evaluation's predictions) need real logits; so does a trainable head.
        fuse = not return_outputs and fused_loss_supported(self.model)
        # The Trainer's autocast wraps the model's forward only, not this method: name the dtype.
        dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
        loss, outputs, answer_tokens = completion_loss_sum(model, inputs, self.model if fuse else None, dtype)
        # Same normalisation as transformers' own causal-LM loss: by the label tokens of the whole
        # accumulated batch when the Trainer gives that count, else by this batch's.
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else answer_tokens)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


class CompletionLossTrainer(EagerEvaluation, WidthAttention, CompletionLoss, SeededSampling, Trainer):
    """The causal Trainer: completion-only logits, per-batch attention, seeded length grouping.
    Mixins, not methods of this class, so each `compute_loss` runs and hands on with `super()`
    (a method defined here would shadow WidthAttention's)."""


class MetricsLogger(TrainerCallback):
    """Appends every Trainer log to `metrics.jsonl` as it happens, with `elapsed_s` (seconds since
    training began), so plots, reports and accuracy-against-minutes survive a killed run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.perf_counter()

    def write(self, record: dict[str, Any]) -> None:
        append_jsonl(self.path, [record])

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and state.is_world_process_zero:
            elapsed = round(time.perf_counter() - self.started, 2)
            self.write({"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "elapsed_s": elapsed, **logs})


class PaceClock(TrainerCallback):
    """The first step's seconds and the pace after it: the first step pays the one-time costs
    (allocations, kernel choice, and with `train.compile` the compiling), the rest is the pace
    a longer run keeps. Read by `train.summarize` and bench/train_speed.py."""

    def __init__(self) -> None:
        self.started = self.first_end = self.last_end = None
        self.first_tokens = self.tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started, self.first_end = time.perf_counter(), None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last_end, self.tokens = time.perf_counter(), int(state.num_input_tokens_seen or 0)
        if self.first_end is None:
            self.first_end, self.first_tokens = self.last_end, self.tokens

    def first_step_s(self) -> float | None:
        return None if self.first_end is None else round(self.first_end - self.started, 2)

    def tokens_per_s_after_first_step(self) -> float | None:
        if self.first_end is None or self.last_end is None or self.last_end <= self.first_end:
            return None
        return round((self.tokens - self.first_tokens) / (self.last_end - self.first_end), 1)


def stretch_schedule(scheduler: Any, total_steps: int, warmup_steps: int) -> bool:
    """Give a running LR schedule a new length, so it still ends where it should (cosine reaches
    its minimum at the new last step). transformers' schedules are LambdaLRs over a `partial`
    that carries `num_training_steps`; we rebuild that partial. False when the schedule has no
    length to change (e.g. constant)."""
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps it
    changed = False
    for index, fn in enumerate(getattr(scheduler, "lr_lambdas", [])):
        if isinstance(fn, functools.partial) and "num_training_steps" in fn.keywords:
            keywords = dict(fn.keywords, num_training_steps=total_steps)
            if "num_warmup_steps" in keywords:
                keywords["num_warmup_steps"] = warmup_steps
            scheduler.lr_lambdas[index] = functools.partial(fn.func, *fn.args, **keywords)
            changed = True
    return changed


class TimeBudget(TrainerCallback):
    """`train.max_minutes`: time the first steps, then fix the number of steps so the run (evaluations
    and checkpoints included) ends within the budget, and stretch the LR schedule to that length so
    it runs whole.

    The Trainer starts with an upper bound (the epochs or max_steps of the config). After
    `calibrate_steps` we set `state.max_steps` (the Trainer's own flow callback stops, evaluates and
    saves there) from the pace so far plus one evaluation per `eval_steps`. The first steps are not
    the typical ones (length grouping puts the longest batch first; kernels warm up), and
    evaluations, checkpoints and a machine that slows down are only seen as the run goes, so every
    twentieth of the way the pace since the first step (`pace`) is checked again, and
    the length refitted when the run would overshoot the budget or leave more than 3% of it unused
    (up to the upper bound). The schedule is stretched each time, so the cosine still ends whole.
    """

    def __init__(self, minutes: float, *, warmup_ratio: float, eval_s: float, log: Log, calibrate_steps: int = 6,
                 early_fit_after: int = 1, clock: Callable[[], float] = time.perf_counter) -> None:
        """`early_fit_after`: timed steps (after the first) a fit before `calibrate_steps` needs.
        Compiled runs pass 3: their second step can compile too (a cold demo: 46 s, 33 s, then
        ~2 s per step), and only the median of three durations sees past it."""
        self.budget_s = minutes * 60.0
        self.early_fit_after = early_fit_after
        self.warmup_ratio = warmup_ratio
        self.eval_s = eval_s
        self.log = log
        self.calibrate_steps = calibrate_steps
        self.clock = clock
        self.started = clock()
        self.last_step_end: float | None = None
        self.durations: list[float] = []
        self.fitted_steps: int | None = None
        self.upper_steps: int | None = None
        self.checked_at = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = self.clock()

    def pace(self) -> float | None:
        """Seconds per step after the first: the mean step, leaving out steps over 8x the median.
        Those are one-time costs, not the pace: with `train.compile` a later step can compile
        again (another attention kernel for wider batches: ~40 s against ~1.5 s per step), and
        counting it in the mean made the first fit several times too short. Evaluations (a few
        steps' time) stay in."""
        if not self.durations:
            return None
        typical = statistics.median(self.durations)
        kept = [d for d in self.durations if d <= 8 * typical]
        return sum(kept) / len(kept)

    def _fit(self, state: Any, steps: int, scheduler: Any) -> bool:
        self.fitted_steps = state.max_steps = steps
        warmup = math.ceil(self.warmup_ratio * steps) if self.warmup_ratio < 1 else int(self.warmup_ratio)
        return stretch_schedule(scheduler, steps, warmup)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = self.clock()
        step = state.global_step
        if self.last_step_end is not None:  # the first step pays one-time costs: time from its end
            self.durations.append(now - self.last_step_end)
        self.last_step_end = now
        elapsed = now - self.started
        left = self.budget_s - elapsed - self.eval_s  # keep one evaluation for the end
        pace = self.pace()
        # Fit after `calibrate_steps`, or sooner when steps are slow (5% of the budget spent), so a
        # slow model does not run a large part of its budget on the provisional schedule.
        calibrated = step >= min(self.calibrate_steps, state.max_steps) or (
            len(self.durations) >= self.early_fit_after and elapsed > 0.05 * self.budget_s)
        if self.fitted_steps is None and pace is not None and calibrated:
            self.upper_steps = state.max_steps
            eval_every = state.eval_steps if args.eval_strategy == "steps" and state.eval_steps else None
            per_step = pace + (self.eval_s / eval_every if eval_every else 0.0)
            fitted = max(step, min(state.max_steps, step + int(max(0.0, left) / per_step)))
            stretched = self._fit(state, fitted, kwargs.get("lr_scheduler"))
            self.checked_at = step
            self.log(
                f"train.max_minutes={self.budget_s / 60:g}: {pace:.2f}s per step -> {fitted} steps"
                + ("" if stretched else " (this LR schedule has no length to stretch)")
            )
        elif self.fitted_steps is not None and pace is not None and step < state.max_steps and (
                step - self.checked_at >= max(3, self.fitted_steps // 20)):
            self.checked_at = step
            projected = elapsed + (state.max_steps - step) * pace + self.eval_s
            if projected > self.budget_s or projected < 0.97 * self.budget_s:
                fitted = min(self.upper_steps or state.max_steps, max(step + 1, step + int(max(0.0, left) / pace)))
                if fitted != state.max_steps:
                    faster = fitted > state.max_steps
                    self._fit(state, fitted, kwargs.get("lr_scheduler"))
                    self.log(f"train.max_minutes: {'faster' if faster else 'slower'} than measured "
                             f"({pace:.2f}s per step) -> {fitted} steps")
        if step >= state.max_steps:
            # Epoch-based evaluation would never run when the budget ends mid-epoch: evaluate and
            # save here so the last steps count for the best checkpoint.
            control.should_evaluate = True
            control.should_save = True
            control.should_training_stop = True
        elif elapsed > self.budget_s * 1.25:  # far past the budget: stop, keep the work
            self.log("train.max_minutes: over budget; stopping early (the LR schedule is cut)")
            control.should_evaluate = control.should_save = control.should_training_stop = True


class EvalBatchFollowsTrain(TrainerCallback):
    """With `train.batch_size: auto`, evaluate in batches of the size training found to fit.

    The Trainer's `auto_find_batch_size` only searches the training batch (accelerate's
    find_executable_batch_size: start high, shrink by 10% on each CUDA out-of-memory error); the
    evaluations during training would still run at the starting size, and an eval batch holds the
    full-vocabulary logits of every position, so it can fail where the training batch fits.
    """

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.train_batch_size:
            args.per_device_eval_batch_size = min(args.per_device_eval_batch_size, state.train_batch_size)


def evaluate_fitting(trainer: Any) -> dict[str, float]:
    """`trainer.evaluate()`, shrinking the eval batch on out-of-memory errors when the batch size is
    `auto` (the same search the Trainer runs for the training batch); a plain call otherwise."""
    args = trainer.args
    if not args.auto_find_batch_size:
        return trainer.evaluate()
    from accelerate.utils import find_executable_batch_size

    @find_executable_batch_size(starting_batch_size=args.per_device_eval_batch_size)
    def evaluate(batch_size: int) -> dict[str, float]:
        args.per_device_eval_batch_size = batch_size
        return trainer.evaluate()

    return evaluate()


def resolve_precision(cfg: RunConfig, model_type: str, device: str) -> str:
    """`auto` -> bf16 where the hardware supports it (CPU included), else fp32. Never fp16 for T5."""
    from loratune.models import bf16_supported

    precision = cfg.train.precision
    if precision == "fp16" and model_type == "seq2seq":
        raise ConfigError("train.precision: fp16 overflows in T5 models; use bf16, fp32 or auto")
    if precision == "fp16" and device != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA GPU; use bf16, fp32 or auto")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if precision == "bf16" and not bf16_supported(device):
        raise ConfigError(f"train.precision: bf16 is not supported on this {device}; use fp32 or auto")
    return precision


def _accepts(args_cls: type, name: str) -> bool:
    return name in inspect.signature(args_cls.__init__).parameters


def training_arguments(cfg: RunConfig, run_dir: Path, precision: str, device: str, model_type: str) -> Any:
    """Map loratune's train settings onto transformers' (Seq2Seq)TrainingArguments."""
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    t = cfg.train
    strategy = "steps" if t.eval_steps else "epoch"
    auto_batch = t.batch_size == "auto"
    if auto_batch and device != "cuda":
        batch_size = 8  # finding the largest batch by trial needs CUDA OOM errors; on CPU use 8
    else:
        batch_size = 64 if auto_batch else int(t.batch_size)
    args_cls = Seq2SeqTrainingArguments if model_type == "seq2seq" else TrainingArguments
    report_to = ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []
    if report_to:  # transformers 5 reads the TensorBoard directory from the environment
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    # transformers 5 renamed some arguments; pass whichever this version knows.
    renamed = {
        ("warmup_ratio" if _accepts(args_cls, "warmup_ratio") else "warmup_steps"): t.warmup_ratio,
        ("activation_checkpointing" if _accepts(args_cls, "activation_checkpointing")
         else "gradient_checkpointing"): t.gradient_checkpointing,
    }
    if _accepts(args_cls, "train_sampling_strategy"):
        renamed["train_sampling_strategy"] = "group_by_length" if t.group_by_length else "random"
    else:
        renamed["group_by_length"] = t.group_by_length
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
        # Checkpoints go with evaluations unless save_steps says otherwise (validated to be a
        # multiple of eval_steps, which keeping the best checkpoint needs).
        save_steps=t.save_steps or t.eval_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=t.keep_best,
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
        **renamed,
    )
