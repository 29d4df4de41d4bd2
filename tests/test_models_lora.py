"""LoRA wiring: per-architecture targets, the original's parameter line, merge == base + adapter."""

import pytest
import torch

from loratune.config import LoraSettings
from loratune.errors import AdapterError
from loratune.models.load import load_model
from loratune.models.lora import (
    apply_lora,
    count_parameters,
    default_target_modules,
    ensure_trainable,
    merge_adapter,
    trainable_parameters_line,
)


def test_default_targets(tiny_t5_dir, tiny_llama_dir):
    assert default_target_modules(load_model(str(tiny_t5_dir)).model) == ["q", "v", "o"]
    assert "down_proj" in default_target_modules(load_model(str(tiny_llama_dir)).model)


def test_parameter_line_counts_by_hand(tiny_t5_dir):
    loaded = load_model(str(tiny_t5_dir), device="cpu")
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


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_bias_setting_trains_exactly_those_biases(bias):
    """The FLAN-T5 recipe's bias=all: every bias trains, besides LoRA; lora_only: the adapted
    layers' biases; none: LoRA alone. Counted by hand on a tiny Llama with biased projections."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, attention_bias=True, mlp_bias=True)
    model = apply_lora(LlamaForCausalLM(config), "causal", LoraSettings(r=2, bias=bias, target_modules=["q_proj"]))
    lora = 2 * 2 * (16 + 16)  # r * (in + out) for q_proj in each of 2 layers
    # per layer: q, k, v, o biases (16 each) + gate, up (32 each) + down (16)
    biases = {"none": 0, "all": 2 * (4 * 16 + 2 * 32 + 16), "lora_only": 2 * 16}[bias]
    assert count_parameters(model)[0] == lora + biases


def test_zero_trainable_is_an_error(tiny_llama_dir):
    model = load_model(str(tiny_llama_dir), device="cpu").model
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(AdapterError, match="zero parameters"):
        ensure_trainable(model)


def test_missing_adapter_dir(tmp_path, tiny_llama_dir):
    model = load_model(str(tiny_llama_dir), device="cpu").model
    with pytest.raises(AdapterError, match="no such run or adapter directory"):
        apply_lora(model, "causal", LoraSettings(init_adapter=str(tmp_path / "nope")))


@pytest.mark.parametrize("which,kind", [("tiny_llama_dir", "causal"), ("tiny_t5_dir", "seq2seq")])
def test_merge_equals_base_plus_adapter(tmp_path, which, kind, request):
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    model_dir = request.getfixturevalue(which)
    base = load_model(str(model_dir), device="cpu").model
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
    base_logits = load_model(str(model_dir), device="cpu").model.eval()(**inputs).logits
    assert not torch.allclose(got, base_logits, atol=1e-3)
    with pytest.raises(AdapterError, match="not empty"):
        merge_adapter(tmp_path / "run", tmp_path / "merged")


# ---------------------------------------------------------------- speed levers leave the numbers right


def _lora_llama(model_dir, weights_dtype=torch.float32, dropout=0.0):
    """Tiny Llama + LoRA on every projection, with fixed A and non-zero B so the adapter path counts."""
    model = apply_lora(load_model(str(model_dir), dtype=weights_dtype, device="cpu").model, "causal",
                       LoraSettings(r=4, alpha=8, dropout=dropout))
    generator = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = (torch.randn(param.shape, generator=generator) * 0.1).to(param.dtype)
    return model.train()


def _loss(model, bf16: bool) -> torch.Tensor:
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46], [1, 50, 51, 52, 53, 54, 2, 2]])
    mask = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])
    labels = torch.where(mask.bool(), ids, -100)
    labels[:, :3] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def _lora_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten().float() for n, p in model.named_parameters() if p.requires_grad])


def test_dropout_zero_is_deterministic_and_equals_eval_mode(tiny_llama_dir):
    model = _lora_llama(tiny_llama_dir, dropout=0.0)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())  # no masked copies at all
    train_losses = [_loss(model, bf16=False).item() for _ in range(2)]
    eval_loss = _loss(model.eval(), bf16=False).item()
    assert train_losses[0] == train_losses[1] == pytest.approx(eval_loss, abs=1e-6)
    with_dropout = _lora_llama(tiny_llama_dir, dropout=0.05).eval()
    assert _loss(with_dropout, bf16=False).item() == pytest.approx(eval_loss, abs=1e-6)


def test_bf16_frozen_projections_keep_the_numbers(tiny_llama_dir):
    """prepare_for_precision("bf16") stores frozen projections in bf16 and skips peft's input cast:
    the loss and LoRA gradients under bf16 autocast are those of fp32 weights under autocast
    (autocast rounds the weights exactly so), and adapters and optimizer state stay fp32."""
    from loratune.models.precision import prepare_for_precision

    reference = _lora_llama(tiny_llama_dir)
    lever = _lora_llama(tiny_llama_dir)
    assert prepare_for_precision(lever, "bf16") == 14  # 7 projections x 2 layers; embeddings stay fp32
    inner = lever.base_model.model.model
    assert inner.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16
    assert inner.embed_tokens.weight.dtype == torch.float32
    assert {p.dtype for n, p in lever.named_parameters() if "lora_" in n} == {torch.float32}
    expected, got = _loss(reference, bf16=True), _loss(lever, bf16=True)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    expected.backward()
    got.backward()
    assert torch.allclose(_lora_grads(reference), _lora_grads(lever), rtol=1e-3, atol=1e-5)
    optimizer = torch.optim.AdamW([p for p in lever.parameters() if p.requires_grad], lr=1e-3)
    optimizer.step()
    assert {s["exp_avg"].dtype for s in optimizer.state.values()} == {torch.float32}


def test_prepare_for_fp32_changes_nothing(tiny_llama_dir):
    from loratune.models.precision import prepare_for_precision

    model = _lora_llama(tiny_llama_dir)
    before = _loss(model, bf16=False).item()
    assert prepare_for_precision(model, "fp32") == 0
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert _loss(model, bf16=False).item() == before


