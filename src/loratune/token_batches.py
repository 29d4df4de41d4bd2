"""Training batches sized by a token budget instead of a row count.

A batch of 8 rows is 8 x its longest row in padded tokens: 600 tokens for short rows, 2,000 for
long ones. Sizing batches by padded tokens instead (`train.batch_tokens`) keeps every step's
matmuls about the same size, big enough to keep the CPU's matrix units busy, and packs rows of
similar length together so little of the budget is padding.

The sampler yields lists of row indices, for a DataLoader's `batch_sampler`. Rows are shuffled
(seeded), cut into windows of about 50 batches, sorted by length inside each window and packed
greedily, as transformers' length-grouped sampler does for row counts. The packing is done once,
so the number of batches per epoch is fixed (the Trainer reads it to plan its schedule); each
epoch then visits the batches in a new seeded order, the largest batch first so that running out
of memory happens at the first step rather than hours in.
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Sequence

from torch.utils.data import Sampler

WINDOW_BATCHES = 50
"""Rows are sorted by length within windows of about this many batches (as transformers does)."""


def pack_batches(lengths: Sequence[int], max_tokens: int, seed: int = 0) -> list[list[int]]:
    """Row indices grouped into batches whose padded size (rows x longest row) fits `max_tokens`.

    A row longer than the budget gets a batch of its own rather than being dropped or cut.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    batches: list[list[int]] = []
    window: list[int] = []
    window_tokens = 0
    for index in order + [None]:  # None flushes the last window
        if index is not None:
            window.append(index)
            window_tokens += lengths[index]
            if window_tokens < WINDOW_BATCHES * max_tokens:
                continue
        current: list[int] = []
        for row in sorted(window, key=lambda i: -lengths[i]):
            # Sorted longest first, so the batch's width is the length of its first row.
            width = lengths[current[0]] if current else lengths[row]
            if current and width * (len(current) + 1) > max_tokens:
                batches.append(current)
                current = []
            current.append(row)
        if current:
            batches.append(current)
        window, window_tokens = [], 0
    return batches


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Batches of row indices under a padded-token budget, in a new seeded order every epoch."""

    def __init__(self, lengths: Sequence[int], max_tokens: int, seed: int = 0) -> None:
        self.lengths = list(lengths)
        self.max_tokens = max_tokens
        self.seed = seed
        self.epoch = 0
        self.batches = pack_batches(self.lengths, max_tokens, seed)

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer at the start of every epoch, so each epoch gets its own order."""
        self.epoch = epoch

    def padded_tokens(self, batch: list[int]) -> int:
        return len(batch) * max(self.lengths[i] for i in batch)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        random.Random(self.seed + self.epoch).shuffle(order)
        largest = max(order, key=lambda b: self.padded_tokens(self.batches[b]))
        order.remove(largest)
        for b in [largest] + order:
            yield list(self.batches[b])

    def __len__(self) -> int:
        return len(self.batches)


def token_budget_loader(dataset: Any, collate_fn: Any, max_tokens: int, seed: int = 0) -> Any:
    """A DataLoader over `dataset` (rows with `input_ids`) with token-budget batches.

    For `Trainer.get_train_dataloader`; pass the result through `accelerator.prepare` there.
    """
    from torch.utils.data import DataLoader

    lengths = [len(ids) for ids in dataset["input_ids"]]
    sampler = TokenBudgetBatchSampler(lengths, max_tokens, seed)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=0)
