"""Token-budget batches: every row exactly once, budgets kept, seeded order, and the same loss."""

import torch

from loratune.token_batches import TokenBudgetBatchSampler, pack_batches, token_budget_loader


def test_every_row_once_and_budget_kept():
    lengths = [((i * 37) % 90) + 10 for i in range(500)]
    batches = pack_batches(lengths, max_tokens=400, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 400


def test_row_longer_than_budget_gets_its_own_batch():
    lengths = [10, 500, 12, 11]
    batches = pack_batches(lengths, max_tokens=100, seed=0)
    assert [1] in batches
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]


def test_padding_is_small_for_sorted_windows():
    # Rows of two lengths, shuffled: packing by length never mixes them when budgets allow.
    lengths = [20] * 50 + [100] * 50
    batches = pack_batches(lengths, max_tokens=400, seed=1)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded <= sum(lengths) + 400  # at most one mixed batch (one budget) per window


def test_epochs_reorder_batches_but_keep_their_count_and_rows():
    lengths = [((i * 13) % 50) + 5 for i in range(200)]
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=256, seed=7)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert len(first) == len(second) == len(sampler)
    assert sorted(map(tuple, first)) == sorted(map(tuple, second))
    assert first != second
    sampler.set_epoch(0)
    assert list(sampler) == first  # a resumed run replays the same order
    largest = max(len(b) * max(lengths[i] for i in b) for b in first)
    assert len(first[0]) * max(lengths[i] for i in first[0]) == largest  # largest first


def _rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        prompt = [3 + (i * 7 + j) % 200 for j in range(5 + i % 9)]
        answer = [3 + (i * 11 + j) % 200 for j in range(2 + i % 4)] + [2]
        rows.append({"input_ids": prompt + answer, "attention_mask": [1] * (len(prompt) + len(answer)),
                     "labels": [-100] * len(prompt) + answer})
    return rows


def test_token_batches_leave_the_loss_right(tiny_llama_dir):
    """The mean loss over all answer tokens is the same however the rows are batched and padded."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq

    from loratune.models import load_model

    loaded = load_model(str(tiny_llama_dir))
    model = loaded.model.eval()
    rows = _rows(24)
    collator = DataCollatorForSeq2Seq(loaded.tokenizer, model=model, label_pad_token_id=-100)

    def total_loss(batches) -> tuple[float, int]:
        loss_sum, count = 0.0, 0
        with torch.no_grad():
            for batch in batches:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                targets = batch["labels"][:, 1:]
                loss_sum += float(torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                    reduction="sum"))
                count += int((targets != -100).sum())
        return loss_sum, count

    one_by_one = total_loss(collator([row]) for row in rows)
    loader = token_budget_loader(Dataset.from_list(rows), collator, max_tokens=64, seed=0)
    batched = total_loss(loader)
    assert len(loader) < len(rows)  # rows were actually batched together
    assert batched[1] == one_by_one[1]
    assert abs(batched[0] / batched[1] - one_by_one[0] / one_by_one[1]) < 1e-5
