"""The Trainer pieces: completion-only loss, precision rules, the LR schedule stretched by a time budget."""

import math

import pytest
import torch

from loratune.errors import ConfigError
from loratune.trainer import resolve_precision, stretch_schedule
from run_helpers import make_cfg


def test_precision_rules(tmp_path, tiny_t5_dir, monkeypatch):
    cfg = make_cfg(tmp_path, tiny_t5_dir, precision="fp16")
    with pytest.raises(ConfigError, match="fp16 overflows in T5"):
        resolve_precision(cfg, "seq2seq", "cpu")
    cfg.train.precision = "fp32"
    assert resolve_precision(cfg, "seq2seq", "cpu") == "fp32"
    cfg.train.precision = "auto"
    monkeypatch.setenv("LORATUNE_PRECISION", "bf16")
    assert resolve_precision(cfg, "causal", "cpu") == "bf16"
    monkeypatch.setenv("LORATUNE_PRECISION", "fp32")
    assert resolve_precision(cfg, "causal", "cpu") == "fp32"
    cfg.train.precision = "bf16"
    with pytest.raises(ConfigError, match="train.precision: bf16 is not supported"):
        resolve_precision(cfg, "causal", "cpu")


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_stretched_schedule_ends_at_its_new_last_step(name):
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=10, num_training_steps=100)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    assert stretch_schedule(scheduler, total_steps=30, warmup_steps=3)
    rates = []
    for _ in range(6, 30):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[-1] == pytest.approx(0.0, abs=1e-9)  # reached the end at step 30, not 100
    # step 7 on the new schedule (warmup 3, 30 steps), by hand
    progress = (7 - 3) / (30 - 3)
    expected = 0.5 * (1 + math.cos(math.pi * progress)) if name == "cosine" else 1 - progress
    assert rates[0] == pytest.approx(expected)
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # decays monotonically


def test_constant_schedule_has_nothing_to_stretch():
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler("constant", optimizer)
    assert not stretch_schedule(scheduler, total_steps=30, warmup_steps=3)
    assert scheduler.get_last_lr() == [1.0]


def test_completion_only_logits_give_the_models_own_loss(tmp_path, tiny_llama_dir):
    """The fast loss (logits only from the first answer position) equals transformers' loss."""
    from transformers import DataCollatorForSeq2Seq, TrainingArguments

    from loratune.config import DataSettings
    from loratune.data import tokenize_rows
    from loratune.models import load_model
    from loratune.tasks import get_task
    from loratune.trainer import CompletionLossTrainer

    loaded = load_model(str(tiny_llama_dir))
    rows = [{"prompt": "short", "completion": "answer one"},
            {"prompt": "a much longer prompt than the other", "completion": "two"}]
    features, _ = tokenize_rows(rows, get_task("prompt-completion"), loaded.tokenizer, "causal", DataSettings())
    batch = DataCollatorForSeq2Seq(loaded.tokenizer, label_pad_token_id=-100, padding=True)(features)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = CompletionLossTrainer(model=loaded.model, args=args)
    with torch.no_grad():
        expected = loaded.model(**batch).loss
        got = trainer.compute_loss(loaded.model, dict(batch))
        n_items = int((batch["labels"][:, 1:] != -100).sum())
        summed = trainer.compute_loss(loaded.model, dict(batch), num_items_in_batch=2 * n_items)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(summed, expected / 2, atol=1e-5)
