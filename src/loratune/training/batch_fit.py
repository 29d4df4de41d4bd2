"""`train.batch_size: auto` on CUDA: the largest batch that fits, found in a few measured steps.

The Trainer's own search (`auto_find_batch_size`, accelerate's `find_executable_batch_size`) starts
at 64 rows and restarts training 10% smaller after each out-of-memory error. On a card where the fit
is far below 64 that is ~20 restarts, each rebuilding the optimizer and the dataloader and running a
step into the error: 64 -> 5 rows took ~27 s on an H200 capped at 2 GB (docs/gpu.md), and on a
consumer card the steps that fail are the original recipe's 512-token rows through a 780M model.

Here, before the Trainer starts: forward and backward passes over copies of the longest training
row (every row of a batch as wide as the widest, so no batch of the run needs more), at 1 and 2 rows
and then at the size that the straight line through the last two fitting sizes puts at the memory
budget, peak memory read after each (`largest_fitting`). Memory per row is linear until the
chunked vocabulary loss caps its logits, then it grows more slowly, so the line errs low and the
next probe corrects it upwards. Three to five probes where memory grows as a line does. The Trainer's search stays on as the safety
net; it starts from the size found here.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from loratune.errors import TrainingError

Log = Callable[[str], None]

# Of the memory this process may use: room for the allocator's fragmentation across batch widths.
HEADROOM = 0.9
MAX_PROBES = 8


def largest_fitting(peak: Callable[[int], float | None], budget: float, limit: int,
                    max_probes: int = MAX_PROBES) -> tuple[int, list[tuple[int, float | None]]]:
    """The largest batch size up to `limit` whose `peak(size)` (bytes; None for an out-of-memory
    error) stays within `budget`, and the probes made.

    Sizes 1 and 2, then the size where the straight line through the two largest fitting sizes
    meets the budget; where that line points at or past a size that did not fit, halfway between
    instead. Stops when the line leaves no room above the largest fitting size, at `limit`, within
    10% of the smallest size that did not fit (the step of the Trainer's own search), or after
    `max_probes`. Returns 0 when one row runs out of memory, 1 when it ran but over the budget."""
    fits: dict[int, float] = {}
    too_big = limit + 1  # the smallest size known not to fit
    probes: list[tuple[int, float | None]] = []
    size = 1
    while len(probes) < max_probes:
        used = peak(size)
        probes.append((size, used))
        if used is None or used > budget:
            too_big = min(too_big, size)
        else:
            fits[size] = used
        if not fits:
            return (0 if used is None else 1), probes
        best = max(fits)
        if best >= limit or too_big - best <= max(1, too_big // 10):
            break
        size = _next_size(fits, best, too_big, limit, budget)
        if size <= best:  # the line leaves no room above the largest size that fitted
            break
    return max(fits), probes


def _next_size(fits: dict[int, float], best: int, too_big: int, limit: int, budget: float) -> int:
    if len(fits) < 2:
        return 2 * best
    low, high = sorted(fits)[-2:]
    per_row = (fits[high] - fits[low]) / (high - low)
    guess = high + int((budget - fits[high]) / per_row) if per_row > 0 else limit
    if guess >= too_big and too_big <= limit:  # memory grew faster than the line near a failure: bisect
        return (best + too_big) // 2
    return min(guess, limit)


def probe_step(trainer: Any, feature: dict[str, Any], rows: int) -> None:
    """One forward and backward pass over `rows` copies of `feature`, as the Trainer's step runs it
    (its collator, its loss, its autocast), leaving no trace: gradients cleared, the random number
    generators as they were (so the run's dropout masks and order do not change), the train/eval
    mode restored."""
    model = trainer.model
    device = trainer.args.device
    batch = trainer.data_collator([feature] * rows)
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    was_training = model.training
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            model.train()
            # accelerate wraps the model's forward in autocast when train() prepares it; not yet here.
            with trainer.accelerator.autocast():
                loss = trainer.compute_loss(model, inputs)
            loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def _cuda_peak(step: Callable[[], None], extra_bytes: int) -> float | None:
    """Peak bytes allocated while `step` runs (plus `extra_bytes`), or None on out-of-memory."""
    from accelerate.utils import release_memory
    from accelerate.utils.memory import should_reduce_batch_size

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    try:
        step()
        torch.cuda.synchronize()
    except Exception as error:  # the same errors the Trainer's search retries on (cuDNN's included)
        if not should_reduce_batch_size(error):
            raise
        release_memory()
        return None
    return float(torch.cuda.max_memory_allocated() + extra_bytes)


def usable_cuda_bytes(device: torch.device) -> float:
    """The memory this process may use: what it holds plus what the card has free, within the
    cap of `torch.cuda.set_per_process_memory_fraction`, when one is set."""
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda _device: 1.0)(device)
    return min(free + torch.cuda.memory_reserved(device), fraction * total)


def longest_feature(features: list[dict[str, Any]], encoder_decoder: bool) -> dict[str, Any]:
    """The row that needs the most memory: the most tokens, the answer's counted apart only where
    a decoder reads it (T5); a causal row's labels are its own positions."""
    return max(features, key=lambda f: len(f["input_ids"]) + (len(f.get("labels", ())) if encoder_decoder else 0))


def fit_batch_size(trainer: Any, features: list[dict[str, Any]], log: Log) -> dict[str, Any]:
    """Set the Trainer's starting batch size (and its eval batch) to the largest that fits this
    GPU for the longest training row; what was measured, for run_summary.json."""
    started = time.perf_counter()
    args, model = trainer.args, trainer.model
    # transformers 5 renamed gradient checkpointing to activation checkpointing; either name.
    if getattr(args, "activation_checkpointing", getattr(args, "gradient_checkpointing", False)):
        # The Trainer turns it on inside train(); the probes must see its memory per row.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    feature = longest_feature(features, bool(getattr(model.config, "is_encoder_decoder", False)))
    # AdamW keeps two fp32 moments per trainable parameter, created at the first optimizer step.
    optimizer_bytes = 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    budget = HEADROOM * usable_cuda_bytes(args.device)
    limit = args.per_device_train_batch_size
    size, probes = largest_fitting(lambda rows: _cuda_peak(lambda: probe_step(trainer, feature, rows),
                                                           optimizer_bytes), budget, limit)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shared = torch.tensor(size, device=args.device)  # every process steps the same batch
        torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.MIN)
        size = int(shared.item())
    tokens = len(feature["input_ids"])
    if size == 0:
        raise TrainingError(
            f"train.batch_size: auto: one row of {tokens} tokens (the longest training row) runs out of GPU "
            f"memory ({budget / HEADROOM / 1e9:.1f} GB usable); lower data.max_source_tokens, or set "
            "train.gradient_checkpointing: true or train.load_in_4bit: true")
    if args.device.type == "cuda":  # run_summary's peak memory is training's, not the probes'
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(args.device)
    args.per_device_train_batch_size = args.per_device_eval_batch_size = size
    # The Trainer read its starting size from the arguments when it was built; train() starts its
    # out-of-memory search from this attribute (transformers 5: Trainer.train).
    trainer._train_batch_size = args.train_batch_size
    seconds = round(time.perf_counter() - started, 1)
    log(f"train.batch_size: auto -> {size} rows per step fit {budget / 1e9:.2f} GB "
        f"({HEADROOM:.0%} of this GPU's usable memory) at the longest row's {tokens} tokens; "
        f"probed {', '.join(str(rows) for rows, _ in probes)} rows in {seconds:g}s")
    return {"rows": size, "budget_gb": round(budget / 1e9, 2), "seconds": seconds,
            "probes": [[rows, None if used is None else round(used / 1e9, 3)] for rows, used in probes]}
