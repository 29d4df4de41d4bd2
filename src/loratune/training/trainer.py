"""What loratune adds to transformers' Trainer: completion-only logits, an eval loss averaged over
tokens, a log written as it goes, the pace of the steps, and the mapping from loratune's settings
to TrainingArguments. (The wall-clock budget, `train.max_minutes`, is loratune/training/time_budget.py.)

We build on Trainer / Seq2SeqTrainer instead of a hand-written loop so that resume, gradient
accumulation, schedules, checkpointing and multi-process training (torchrun / accelerate) come from
the library the field already trusts.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback

from loratune.config import RunConfig
from loratune.errors import TrainingError
from loratune.json_files import append_jsonl
from loratune.training.attention import use_attention_for
from loratune.training.compilation import EagerEvaluation
from loratune.training.loss import completion_loss_sum, fused_loss_supported


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

        # self.model is the unwrapped model, so this is safe under DistributedDataParallel.
        use_attention_for(self.model, self.args.device.type, inputs["input_ids"].shape[1], self.run_attention)
        return super().compute_loss(model, inputs, *args, **kwargs)


class FiniteLoss:
    """Mixed into every loratune Trainer: stop at the first step whose loss is NaN or infinite.

    The Trainer itself only keeps such steps out of its logged average (`logging_nan_inf_filter`):
    the log shows a loss of 0 and a grad norm of nan, the adapter's weights become NaN, and the run
    goes on to its end and saves them. Checking costs nothing extra: that filter already reads the
    loss on every step."""

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        loss = super().training_step(model, inputs, *args, **kwargs)
        if not bool(torch.isfinite(loss).all()):
            raise TrainingError(
                f"training step {self.state.global_step + 1}: the loss is {loss.item()}, so every weight it updates "
                "would be too; stopped before saving an adapter. Lower train.lr "
                f"(now {self.args.learning_rate:g}); if the loss was finite with train.compile: false, the "
                "compiled kernels are at fault (README, \"When things go wrong\")")
        return loss


class TokenMeanEvalLoss:
    """Mixed into every loratune Trainer: the eval loss is the mean over the eval set's answer tokens,
    whatever the eval batch size.

    transformers averages each batch's mean loss, weighted by the configured batch size
    (`losses.repeat(batch_size)` in `evaluation_loop`), so rows in short-answer batches weigh more
    and the figure moved with the batch: the untrained demo model read 1.991 at 2 rows per batch and
    1.832 at 8 on the same 16 rows. Curves of runs with different batch sizes were not comparable.
    Here each batch's loss (a mean over its answer tokens) is multiplied back by that token count
    and summed, and the loop's figure is replaced by sum / tokens, added up across processes. Under
    DDP accelerate evens out the last round of batches with rows from the start of the eval set
    (`even_batches`); the Trainer's own figure drops them (`gather_for_metrics`), and so does this
    one (`_real_rows`)."""

    _eval_sums: list[torch.Tensor] | None = None  # [loss x tokens, tokens] per batch, during a loop

    def evaluation_loop(self, dataloader: Any, description: str, prediction_loss_only: bool | None = None,
                        ignore_keys: Any = None, metric_key_prefix: str = "eval") -> Any:
        self._eval_sums = []
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
            sums = self._eval_sums
        finally:
            self._eval_sums = None
        key = f"{metric_key_prefix}_loss"
        if sums and key in output.metrics:
            total = self.accelerator.reduce(torch.stack(sums).sum(0), reduction="sum")
            if total[1] > 0 and bool(torch.isfinite(total[0])):  # else keep the Trainer's (it filters NaN)
                output.metrics[key] = (total[0] / total[1]).item()
        return output

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if self._eval_sums is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # In an evaluation, the loss of this process's batch alone: the Trainer would divide by the
        # answer tokens of all processes' batches (gathered), which only the sum below needs.
        result = super().compute_loss(model, inputs, return_outputs, None)
        loss, targets = (result[0] if return_outputs else result), inputs.get("labels")
        if targets is not None:
            real = self._real_rows(len(targets))
            if real is not None:
                loss, tokens = self._loss_of_rows(model, inputs, real)
            else:
                tokens = self._answer_tokens(targets).to(loss.device)
            self._eval_sums.append(torch.stack([loss.detach().float() * tokens, tokens]))
        return result

    def _answer_tokens(self, targets: torch.Tensor) -> torch.Tensor:
        # A causal model predicts token t+1 from position t: its loss leaves out each row's first label.
        if not getattr(getattr(self.model, "config", None), "is_encoder_decoder", False):
            targets = targets[..., 1:]
        return (targets != -100).sum().to(torch.float32)

    def _real_rows(self, rows: int) -> int | None:
        """On the last round of batches of a DDP evaluation that accelerate padded, how many of this
        batch's rows are the eval set's own; None elsewhere. accelerate deals each round of batches
        to the processes in order and fills the last round's batches up with rows from the start of
        the set (`even_batches`, real rows first); `remainder` is how many of that round's rows are
        real, the count `gather_for_metrics` keeps of the Trainer's own per-row losses."""
        accelerator = self.accelerator
        state = accelerator.gradient_state
        loader = state.active_dataloader
        if accelerator.num_processes == 1 or not state.end_of_dataloader or state.remainder <= 0 or loader is None:
            return None
        per_process = loader.total_batch_size // accelerator.num_processes
        return max(0, min(rows, state.remainder - accelerator.process_index * per_process))

    def _loss_of_rows(self, model: Any, inputs: dict[str, Any], real: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[mean loss, answer tokens] of the batch's first `real` rows, by one more forward. Every
        process runs it on that round, a batch of padding alone on one row that counts nothing, so
        all run the same forwards (FSDP gathers each layer's weights from all processes at once)."""
        rows = len(inputs["labels"])
        part = {k: v[:max(real, 1)] if isinstance(v, torch.Tensor) and v.dim() and len(v) == rows else v
                for k, v in inputs.items()}
        loss = super().compute_loss(model, part, False, None).detach()
        tokens = self._answer_tokens(part["labels"]).to(loss.device)
        return (loss, tokens) if real else (torch.zeros_like(loss), torch.zeros_like(tokens))


class LoratuneTrainer(FiniteLoss, TokenMeanEvalLoss, EagerEvaluation, WidthAttention, SeededSampling, Trainer):
    """transformers' Trainer with seeded length-grouped sampling, per-batch attention, a finite loss,
    an eval loss averaged over tokens."""


class CompletionLoss:
    """Mixed into the causal Trainer: the loss over the answer tokens only (`loratune.training.loss`).

    Rows are a prompt (labels -100) followed by the answer, and most tokens are prompt. The
    vocabulary projection (49k x 576 for SmolLM2) is a fifth of the model's compute and its
    logits dominate memory, so only answer positions are projected: in training, chunk by chunk
    with the gradient computed as it goes (`vocab_cross_entropy`: 1.16-1.20x useful tok/s under
    bf16, 1.09-1.34x in fp32, bench/fused_loss.py). An evaluation that wants the loss only (the
    eval-loss curve: no `compute_metrics`) takes the same path without the gradient; one that wants
    predictions, and models `fused_loss_supported` refuses, get real logits from the earliest answer
    position on.
    """

    _loss_only = False  # set by `prediction_step` while it evaluates a batch for its loss alone

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: Any = None) -> Any:
        # The Trainer asks `compute_loss` for outputs even when it will drop them (it then returns
        # (loss, None, None)); transformers skips the logits the same way for its Liger kernels.
        self._loss_only = prediction_loss_only
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        finally:
            self._loss_only = False

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:

        labels = inputs.get("labels")
        if labels is None or self.label_smoother is not None or not bool((labels[:, 1:] != -100).any()):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # Outputs that will be used (predictions) need real logits; so does a trainable head. With
        # the fused path the outputs' `logits` hold hidden states, dropped by a loss-only evaluation.
        fuse = (not return_outputs or self._loss_only) and fused_loss_supported(self.model)
        # The Trainer's autocast wraps the model's forward only, not this method: name the dtype.
        dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
        loss, outputs, answer_tokens = completion_loss_sum(model, inputs, self.model if fuse else None, dtype)
        # Same normalisation as transformers' own causal-LM loss: by the label tokens of the whole
        # accumulated batch when the Trainer gives that count, else by this batch's.
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else answer_tokens)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


class CompletionLossTrainer(FiniteLoss, TokenMeanEvalLoss, EagerEvaluation, WidthAttention, CompletionLoss,
                            SeededSampling, Trainer):
    """The causal Trainer: completion-only logits, per-batch attention, seeded length grouping.
    Mixins, not methods of this class, so each `compute_loss` runs and hands on with `super()`
    (a method defined here would shadow WidthAttention's)."""


class LoratuneSeq2SeqTrainer(FiniteLoss, TokenMeanEvalLoss, EagerEvaluation, SeededSampling, Seq2SeqTrainer):
    """The seq2seq (T5) Trainer: seeded length grouping, a finite loss, an eval loss averaged over tokens."""


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
        self.begins = 0  # more than one: `train.batch_size: auto` restarted after out-of-memory errors

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started, self.first_end = time.perf_counter(), None
        self.begins += 1

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
