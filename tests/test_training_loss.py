"""The completion loss: the chunked vocabulary cross-entropy gives the plain path's loss and gradients."""

import json

import pytest
import torch
from run_helpers import make_cfg

from loratune.training.loss import (
    completion_loss_sum,
    fused_loss_supported,
    head_bypassed,
    vocab_cross_entropy,
)


def _plain(hidden, weight, targets):
    return torch.nn.functional.cross_entropy(torch.nn.functional.linear(hidden, weight).float(), targets,
                                             reduction="sum")


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000])
def test_chunked_loss_and_gradient_equal_cross_entropy(chunk_rows):
    torch.manual_seed(0)
    hidden = torch.randn(23, 16, requires_grad=True)
    weight = torch.randn(50, 16)
    targets = torch.randint(0, 50, (23,))
    expected = _plain(hidden, weight, targets)
    (expected_grad,) = torch.autograd.grad(expected * 0.5, hidden)
    got = vocab_cross_entropy(hidden, weight, targets, chunk_elements=chunk_rows * 50)
    (grad,) = torch.autograd.grad(got * 0.5, hidden)  # the upstream gradient scales the stored one
    assert torch.allclose(got, expected, rtol=1e-5)
    assert torch.allclose(grad, expected_grad, atol=1e-5)


def test_chunked_loss_under_bf16_autocast_projects_in_bf16_like_linear():
    torch.manual_seed(1)
    hidden = torch.randn(12, 32, requires_grad=True)
    weight = torch.randn(64, 32)
    targets = torch.randint(0, 64, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _plain(hidden, weight, targets)
        got = vocab_cross_entropy(hidden, weight, targets, chunk_elements=5 * 64)
    (expected_grad,) = torch.autograd.grad(expected, hidden)
    (grad,) = torch.autograd.grad(got, hidden)
    assert got.dtype == torch.float32 and grad.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-3)
    # Different from fp32 (the logits were bf16), equal to the autocast path up to rounding order.
    assert not torch.allclose(got, _plain(hidden.detach(), weight, targets), rtol=1e-6)
    assert torch.allclose(grad, expected_grad, atol=2e-2, rtol=2e-2)


def test_no_gradient_is_computed_without_a_backward():
    hidden = torch.randn(5, 8)
    loss = vocab_cross_entropy(hidden, torch.randn(11, 8), torch.randint(0, 11, (5,)))
    assert not loss.requires_grad and loss.item() > 0


def _lora_llama(tiny_llama_dir):
    from loratune.config import LoraSettings
    from loratune.models.load import load_model
    from loratune.models.lora import apply_lora

    loaded = load_model(str(tiny_llama_dir), device="cpu")
    model = apply_lora(loaded.model, "causal", LoraSettings(r=4, alpha=8, dropout=0.0))
    for name, param in model.named_parameters():  # B starts at zero; give the adapters a gradient to compare
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return loaded.tokenizer, model


def _batch(tokenizer):
    from transformers import DataCollatorForSeq2Seq

    from loratune.config import DataSettings
    from loratune.data import tokenize_rows
    from loratune.tasks import get_task

    rows = [{"prompt": "short", "completion": "answer one"},
            {"prompt": "a much longer prompt than the other", "completion": "two"},
            {"prompt": "mid-sized prompt", "completion": "a longer answer than both"}]
    features, _ = tokenize_rows(rows, get_task("prompt-completion"), tokenizer, "causal", DataSettings())
    return dict(DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)(features))


def test_fused_completion_loss_gives_the_models_own_loss_and_gradients(tiny_llama_dir):
    tokenizer, model = _lora_llama(tiny_llama_dir)
    assert fused_loss_supported(model)
    batch = _batch(tokenizer)
    expected = model(**batch).loss
    expected_grads = torch.autograd.grad(expected, [p for p in model.parameters() if p.requires_grad])
    loss, outputs, answer_tokens = completion_loss_sum(model, batch, fuse_head_of=model)
    grads = torch.autograd.grad(loss / answer_tokens, [p for p in model.parameters() if p.requires_grad])
    assert answer_tokens == int((batch["labels"][:, 1:] != -100).sum())
    assert outputs.logits.shape[-1] == model.config.hidden_size  # hidden states, never projected
    assert torch.allclose(loss / answer_tokens, expected, atol=1e-5)
    assert all(torch.allclose(g, e, atol=1e-5) for g, e in zip(grads, expected_grads))
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # The head is itself again afterwards.
    assert model(**batch).logits.shape[-1] == model.config.vocab_size


def test_head_is_restored_when_the_forward_fails(tiny_llama_dir):
    _, model = _lora_llama(tiny_llama_dir)
    with pytest.raises(RuntimeError, match="boom"):
        with head_bypassed(model):
            raise RuntimeError("boom")
    assert model(input_ids=torch.tensor([[5, 6]])).logits.shape[-1] == model.config.vocab_size


def test_models_the_fused_loss_cannot_serve_keep_the_plain_path(tiny_llama_dir, tiny_t5_dir):
    from loratune.models.load import load_model

    _, model = _lora_llama(tiny_llama_dir)
    head = model.get_output_embeddings()
    head.weight.requires_grad_(True)  # a trained head needs its weight gradient
    assert not fused_loss_supported(model)
    head.weight.requires_grad_(False)
    model.config.model_type = "gemma2"  # soft-caps its logits after the projection
    assert not fused_loss_supported(model)
    assert not fused_loss_supported(load_model(str(tiny_t5_dir), device="cpu").model)


def test_training_with_the_fused_loss_logs_the_plain_losses(tmp_path, tiny_llama_dir, monkeypatch):
    """The same run with the fused loss and with the plain one: the same logged training and
    evaluation losses; the eval-loss passes (loss only) take the fused path too, without a gradient."""
    import loratune.training.loss as loss_module
    import loratune.training.trainer as trainer_module
    from loratune.models.precision import bf16_supported
    from loratune.training.run import train_run

    calls = []
    real = loss_module.vocab_cross_entropy
    monkeypatch.setattr(loss_module, "vocab_cross_entropy",
                        lambda *a, **k: calls.append((a[3], torch.is_grad_enabled())) or real(*a, **k))
    precisions = []

    def losses(name):
        cfg = make_cfg(tmp_path, tiny_llama_dir, name=name, max_steps=10, eval_steps=5, logging_steps=2)
        precisions.append(train_run(cfg, log=lambda *_: None).summary["precision"])
        rows = [json.loads(line) for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r], [r["eval_loss"] for r in rows if "eval_loss" in r]

    fused, fused_eval = losses("fused")
    training = [dtype for dtype, grad in calls if grad]
    evaluation = [dtype for dtype, grad in calls if not grad]
    assert len(training) == 10  # every training step
    # 6 held-out rows in one batch: the loss before training and at steps 5 and 10
    assert len(evaluation) == len(fused_eval) == 3
    # The Trainer autocasts the model's forward only; the projection is told the run's dtype.
    assert set(training + evaluation) == {torch.bfloat16 if precisions[0] == "bf16" else None}
    monkeypatch.setattr(trainer_module, "fused_loss_supported", lambda model: False)
    calls.clear()
    plain, plain_eval = losses("plain")
    assert not calls and len(fused) == len(plain) >= 5
    # fp32: rounding order only; bf16 (native here): the plain path rounds the scaled logit gradient
    # to bf16, the fused one the unscaled, so ten steps drift apart by ~0.1%.
    tolerance = 1e-2 if bf16_supported("cpu") else 1e-4
    assert fused == pytest.approx(plain, rel=tolerance)
    assert fused_eval == pytest.approx(plain_eval, rel=tolerance)
    assert fused[-1] < fused[0] and fused_eval[-1] < fused_eval[0]


def test_the_cast_head_weight_is_reused_until_the_weight_changes():
    torch.manual_seed(2)
    hidden, targets = torch.randn(6, 8), torch.randint(0, 10, (6,))
    weight = torch.randn(10, 8)

    def loss(w):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return float(vocab_cross_entropy(hidden, w, targets))

    first = loss(weight)
    assert loss(weight) == first
    with torch.no_grad():
        weight.mul_(2)  # changed in place: cast again
    changed = loss(weight)
    assert changed != first
    assert changed == loss(weight.clone())  # another tensor: cast again, same values
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert changed == pytest.approx(float(_plain(hidden, weight, targets)), rel=1e-3)
