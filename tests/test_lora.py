"""LoRA wiring: per-architecture targets, the original's parameter line, merge == base + adapter."""

import pytest
import torch

from loratune.config import LoraSettings
from loratune.errors import AdapterError
from loratune.lora import (
    apply_lora, count_parameters, default_target_modules, ensure_trainable, merge_adapter,
    trainable_parameters_line,
)
from loratune.models import load_model


def test_default_targets(tiny_t5_dir, tiny_llama_dir):
    assert default_target_modules(load_model(str(tiny_t5_dir)).model) == ["q", "v", "o"]
    assert "down_proj" in default_target_modules(load_model(str(tiny_llama_dir)).model)


def test_parameter_line_counts_by_hand(tiny_t5_dir):
    loaded = load_model(str(tiny_t5_dir))
    base_total = sum(p.numel() for p in loaded.model.parameters())
    model = apply_lora(loaded.model, "seq2seq", LoraSettings(r=4))
    # tiny T5: d_model 32, 2 heads x d_kv 16 = inner 32. q, v, o in 2 encoder self-attention
    # layers and 2 decoder layers x (self + cross) attention = 2*3 + 4*3 = 18 modules.
    # Each adds A (r x 32) + B (32 x r) = 2 * 4 * 32 = 256 parameters.
    expected = 18 * 256
    trainable, total = count_parameters(model)
    assert (trainable, total) == (expected, base_total + expected)
    line = trainable_parameters_line(model)
    assert line == (f"Trainable parameters {expected:,} || All parameters {base_total + expected:,} || "
                    f"Trainable parameter percentage: {100 * expected / (base_total + expected):.2f}%")


def test_bias_all_trains_biases(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir))
    model = apply_lora(loaded.model, "causal", LoraSettings(r=2, bias="lora_only", target_modules=["q_proj"]))
    assert count_parameters(model)[0] > 0


def test_zero_trainable_is_an_error(tiny_llama_dir):
    model = load_model(str(tiny_llama_dir)).model
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(AdapterError, match="zero parameters"):
        ensure_trainable(model)


def test_missing_adapter_dir(tmp_path, tiny_llama_dir):
    model = load_model(str(tiny_llama_dir)).model
    with pytest.raises(AdapterError, match="no such run or adapter directory"):
        apply_lora(model, "causal", LoraSettings(init_adapter=str(tmp_path / "nope")))


@pytest.mark.parametrize("which,kind", [("tiny_llama_dir", "causal"), ("tiny_t5_dir", "seq2seq")])
def test_merge_equals_base_plus_adapter(tmp_path, which, kind, request):
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    model_dir = request.getfixturevalue(which)
    base = load_model(str(model_dir)).model
    targets = ["q_proj", "v_proj"] if kind == "causal" else ["q", "v"]
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    adapter = tmp_path / "run" / "adapter"
    peft_model.save_pretrained(str(adapter))
    (adapter / "loratune.json").write_text(json.dumps({"base_model": str(model_dir)}))
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 8]])}
    if kind == "seq2seq":
        inputs["decoder_input_ids"] = torch.tensor([[0, 9, 10]])
    with torch.no_grad():
        expected = peft_model.eval()(**inputs).logits
    out = merge_adapter(tmp_path / "run", tmp_path / "merged")
    cls = AutoModelForCausalLM if kind == "causal" else AutoModelForSeq2SeqLM
    merged = cls.from_pretrained(str(out)).eval()  # plain transformers, no peft
    with torch.no_grad():
        got = merged(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-5)
    base_logits = load_model(str(model_dir)).model.eval()(**inputs).logits
    assert not torch.allclose(got, base_logits, atol=1e-3)
    with pytest.raises(AdapterError, match="not empty"):
        merge_adapter(tmp_path / "run", tmp_path / "merged")
