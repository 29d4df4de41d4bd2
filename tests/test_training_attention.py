"""Attention per batch width: eager and SDPA give the same numbers; a compiled run keeps one."""

import pytest
import torch
from test_models_lora import _lora_grads, _lora_llama, _loss

from loratune.training.attention import attention_for, run_attention, use_attention_for


def test_attention_choice_by_width_keeps_the_loss(tiny_llama_dir):
    """Eager attention for short CPU batches, SDPA for long ones: same loss and gradients (padded rows)."""
    assert attention_for("cpu", 128) == "eager" and attention_for("cpu", 2048) == "sdpa"
    assert attention_for("cuda", 128) == "sdpa"
    model = _lora_llama(tiny_llama_dir)
    results = []
    for width in (8, 4096):  # the width only picks the implementation; the batch is the same
        use_attention_for(model, "cpu", width)
        assert model.base_model.model.config._attn_implementation == attention_for("cpu", width)
        model.zero_grad()
        loss = _loss(model, bf16=False)
        loss.backward()
        results.append((loss.item(), _lora_grads(model)))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-5)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)
    use_attention_for(model, "cpu", 8, fixed="sdpa")  # a compiled run's choice wins over the width
    assert model.base_model.model.config._attn_implementation == "sdpa"


def test_a_run_keeps_the_attention_of_ninety_percent_of_its_rows():
    assert run_attention("cpu", [10] * 95 + [400] * 5) == "eager"
    assert run_attention("cpu", [10] * 80 + [400] * 20) == "sdpa"
    assert run_attention("cpu", [300]) == "sdpa" and run_attention("cpu", []) == "eager"
    assert run_attention("cuda", [10] * 100) == "sdpa"
