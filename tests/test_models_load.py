"""Model sources resolve to the right place, load as the right type, and fail with advice."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny_llama
from transformers import BartConfig, LlamaConfig, T5Config, ViTConfig

from loratune.errors import ModelError
from loratune.models import builtin
from loratune.models.load import (
    detect_model_type,
    load_model,
    memory_footprint_gb,
    resolve_source,
)


def test_resolve_local_directory(tiny_t5_dir: Path) -> None:
    resolved = resolve_source(str(tiny_t5_dir))
    assert (resolved.source_type, resolved.path, resolved.gguf_file) == ("local", str(tiny_t5_dir), None)


def test_resolve_gguf_file_and_directory(tmp_path: Path) -> None:
    gguf = tmp_path / "m" / "model.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    resolved = resolve_source(str(gguf))
    assert (resolved.source_type, resolved.path, resolved.gguf_file) == ("gguf", str(gguf.parent), "model.Q4_1.gguf")
    from_dir = resolve_source(str(gguf.parent))
    assert (from_dir.source_type, from_dir.gguf_file) == ("gguf", "model.Q4_1.gguf")
    (gguf.parent / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="several .gguf files"):
        resolve_source(str(gguf.parent))


def test_resolve_builtin_not_pulled(empty_cache: Path) -> None:
    with pytest.raises(ModelError, match="run `loratune models pull smollm2-135m-instruct`"):
        resolve_source("smollm2-135m-instruct", pull=False)


def test_builtin_from_cache_loads(empty_cache: Path, tiny_llama_dir: Path) -> None:
    target = builtin.hf_dir("smollm2-135m-instruct")
    shutil.copytree(tiny_llama_dir, target)
    builtin.write_marker(target, builtin.CATALOG["smollm2-135m-instruct"])
    resolved = resolve_source("smollm2-135m-instruct")
    assert (resolved.source_type, resolved.path) == ("catalog", str(target))
    loaded = load_model("smollm2-135m-instruct", pull=False)
    assert loaded.model_type == "causal" and loaded.path == str(target)
    assert loaded.source == "smollm2-135m-instruct"


def _tiny_gemma3(path: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer Gemma3 text model (the built-in Gemma's architecture) with the tiny Llama's byte
    tokenizer minus its chat template, since the built-in Gemma is a base model without one."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = None
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=None,
    )
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_builtin_gemma_from_cache_is_causal_without_template(empty_cache: Path, tiny_llama_dir: Path) -> None:
    from loratune.config import LoraSettings
    from loratune.data import wants_chat_template
    from loratune.models.lora import apply_lora

    target = _tiny_gemma3(builtin.hf_dir("gemma3-270m"), tiny_llama_dir)
    builtin.write_marker(target, builtin.CATALOG["gemma3-270m"])
    loaded = load_model("gemma3-270m", pull=False)
    assert loaded.model_type == "causal" and loaded.model.config.model_type == "gemma3_text"
    assert not loaded.has_chat_template
    assert not wants_chat_template(loaded.tokenizer, loaded.model_type, None)  # plain prompts
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token
    model = apply_lora(loaded.model, loaded.model_type, LoraSettings(r=4, alpha=8))
    wrapped = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_missing_path_lists_neighbours(tmp_path: Path) -> None:
    (tmp_path / "flan-t5-base").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelError) as info:
        resolve_source(str(tmp_path / "flan-t5-bsae"))
    message = str(info.value)
    assert "does not exist" in message and "flan-t5-base/" in message and "notes.txt" in message
    assert "loratune models" in message


def test_relative_path_with_existing_parent_is_not_a_hub_id(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="model path 'checkpoints/missing' does not exist"):
        resolve_source("checkpoints/missing")


def test_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="no config.json.*weights.bin"):
        resolve_source(str(tmp_path))


def test_adapter_directory_names_its_base(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base"}))
    with pytest.raises(ModelError, match="LoRA adapter.*/models/base"):
        resolve_source(str(tmp_path))


def test_hub_id_offline_fails_fast() -> None:
    started = time.perf_counter()
    with pytest.raises(ModelError) as info:
        load_model("google/flan-t5-base")
    assert time.perf_counter() - started < 3.0
    message = str(info.value)
    assert "could not reach the Hugging Face hub for 'google/flan-t5-base'" in message
    assert "a local directory, a .gguf file or a built-in model (loratune models)" in message


def test_detect_kind() -> None:
    assert detect_model_type(T5Config()) == "seq2seq"
    assert detect_model_type(BartConfig()) == "seq2seq"
    assert detect_model_type(LlamaConfig()) == "causal"
    with pytest.raises(ModelError, match="model_type 'vit'"):
        detect_model_type(ViTConfig())


def test_load_tiny_t5(tiny_t5_dir: Path) -> None:
    loaded = load_model(str(tiny_t5_dir), device="cpu")
    assert loaded.model_type == "seq2seq" and loaded.path == str(tiny_t5_dir)
    assert type(loaded.model).__name__ == "T5ForConditionalGeneration"
    assert loaded.has_chat_template is False
    assert loaded.tokenizer.pad_token_id == 0 and loaded.model.config.pad_token_id == 0
    assert len(loaded.tokenizer) == loaded.model.config.vocab_size == 384
    batch = loaded.tokenizer(["select 1", "héllo"], padding=True, return_tensors="pt")
    labels = loaded.tokenizer(["one", "two"], padding=True, return_tensors="pt").input_ids
    with torch.no_grad():
        out = loaded.model(**batch, labels=labels)
    assert out.logits.shape == (2, labels.shape[1], 384)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 384), labels.reshape(-1))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_load_tiny_llama_sets_pad_to_eos(tiny_llama_dir: Path) -> None:
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    tokenizer = loaded.tokenizer
    assert loaded.model_type == "causal" and loaded.has_chat_template
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|im_end|>"
    assert loaded.model.config.pad_token_id == tokenizer.eos_token_id == 2
    assert loaded.model.generation_config.pad_token_id == 2
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer("héllo").input_ids
    assert len(ids) == len("héllo".encode()) and tokenizer.decode(ids) == "héllo"


def test_tiny_builders_are_deterministic(tiny_llama_dir: Path, tmp_path: Path) -> None:
    again = load_model(str(build_tiny_llama(tmp_path / "again")), device="cpu")
    first = load_model(str(tiny_llama_dir), device="cpu")
    ids = first.tokenizer("SELECT 1;", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(first.model(ids).logits, again.model(ids).logits)


def test_dtype_and_device(tiny_llama_dir: Path) -> None:
    loaded = load_model(str(tiny_llama_dir), dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}


def test_load_in_4bit_needs_cuda(tiny_llama_dir: Path) -> None:
    with pytest.raises(ModelError, match="CUDA.*bitsandbytes"):
        load_model(str(tiny_llama_dir), load_in_4bit=True, device="cpu")


def test_memory_footprint_gb(tiny_llama_dir: Path) -> None:
    model = load_model(str(tiny_llama_dir), device="cpu").model
    expected = sum(p.numel() * 4 for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())
    assert memory_footprint_gb(model) == pytest.approx(expected / 1e9)
