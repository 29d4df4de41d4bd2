"""GGUF export: transformers reads back what `loratune export` writes and answers as `loratune merge`'s model.

A tiny Llama with a real byte-level BPE (merges included: llama.cpp refuses a gpt2 vocabulary without
them) and a random, non-zero LoRA on every projection stands in for a trained run; one slow test
does the same on the real SmolLM2 after a few training steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from loratune.cli import main
from loratune.errors import ExportError
from loratune.export.gguf import export_run, write_gguf
from loratune.export.gguf_arch import permute_qk as _permute_qk
from loratune.export.gguf_vocab import is_sentencepiece_bpe
from loratune.export.gguf_vocab import pre_tokenizer_name as _pre_tokenizer_name
from loratune.models.lora import merge_adapter
from tiny_models import BPE_MERGES as MERGES
from tiny_models import add_random_adapter, build_tiny_bpe_llama

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["What is 2+2?", "Name the capital of France.", "the theater in the inn", "héllo, SELECT * FROM t;"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny base, a run on it, `loratune merge`'s output, and an f32 export of base and merged model."""
    root = tmp_path_factory.mktemp("export")
    base = build_tiny_bpe_llama(root / "base")
    run = add_random_adapter(base, root / "run")
    merged = merge_adapter(run, root / "merged")
    write_gguf(base, root / "base-gguf" / "base.gguf", "f32")
    return {"root": root, "base": base, "run": run, "merged": merged}


def chat_ids(tokenizer: Any, prompt: str) -> torch.Tensor:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def load_gguf(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def compare(reference_dir: Path, gguf_path: Path, new_tokens: int = 12) -> tuple[float, list[str], list[str]]:
    """(max |logit difference| over PROMPTS, greedy answers of the reference, greedy answers of the GGUF).

    Prompts are encoded by the GGUF's own tokenizer, which must give the reference's ids.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32).eval()
    ref_tokenizer = AutoTokenizer.from_pretrained(reference_dir)
    model, tokenizer = load_gguf(gguf_path)
    assert tokenizer.chat_template == ref_tokenizer.chat_template
    worst, expected, got = 0.0, [], []
    for prompt in PROMPTS:
        ids = chat_ids(ref_tokenizer, prompt)
        assert chat_ids(tokenizer, prompt).tolist() == ids.tolist(), prompt
        with torch.no_grad():
            worst = max(worst, (reference(ids).logits - model(ids).logits).abs().max().item())
            for net, out in ((reference, expected), (model, got)):
                answer = net.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=2)
                out.append(ref_tokenizer.decode(answer[0, ids.shape[1]:]))
    return worst, expected, got


def test_permutation_matches_llama_cpp_and_transformers_undoes_it():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    # One head of dim 4: HF rotates pairs (0, 2) and (1, 3); llama.cpp wants them adjacent.
    rows = np.arange(4, dtype=np.float32)[:, None]
    assert _permute_qk(rows, 1)[:, 0].tolist() == [0, 2, 1, 3]
    weights = np.random.default_rng(0).standard_normal((3 * 8, 5)).astype(np.float32)
    undone = LlamaTensorProcessor()._reverse_permute_weights(_permute_qk(weights, 3), 3)
    assert np.array_equal(undone, weights)


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


@pytest.mark.parametrize("pre,name", [
    (BYTE_LEVEL, "gpt-2"),  # GPT-2's split regex: llama.cpp's "gpt-2"
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}, "smollm"),
])
def test_pre_tokenizer_maps_to_llama_cpp_name(pre, name):
    assert _pre_tokenizer_name({"model": {"type": "BPE"}, "normalizer": None, "pre_tokenizer": pre}, Path("t")) == name


GEMMA_NORMALIZER = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}


@pytest.mark.parametrize("tokenizer_json,sentencepiece", [
    ({"model": {"type": "BPE", "byte_fallback": True}, "normalizer": GEMMA_NORMALIZER,  # Gemma-3's
      "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious"}}, True),
    ({"model": {"type": "BPE", "byte_fallback": True}, "normalizer": GEMMA_NORMALIZER, "pre_tokenizer": None}, True),
    # Llama-2 style: a prefix space is added (Metaspace), which llama.cpp's add_space_prefix would need
    ({"model": {"type": "BPE", "byte_fallback": True}, "normalizer": None,
      "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581"}}, False),
    ({"model": {"type": "BPE", "byte_fallback": False}, "normalizer": GEMMA_NORMALIZER, "pre_tokenizer": None}, False),
])
def test_sentencepiece_shape_is_recognised(tokenizer_json, sentencepiece):
    assert is_sentencepiece_bpe(tokenizer_json) is sentencepiece


def test_unigram_tokenizer_is_refused():
    t5_like = {"model": {"type": "Unigram"}, "normalizer": None,
               "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581"}}
    with pytest.raises(ExportError, match="only byte-level BPE tokenizers .* and SentencePiece-style BPE"):
        _pre_tokenizer_name(t5_like, Path("t"))


def test_f32_export_equals_merge_exactly(tiny_run):
    out = tiny_run["root"] / "f32" / "model.gguf"
    result = export_run(tiny_run["run"], out, outtype="f32")
    assert result.path == out and result.tensors == 2 + 2 * 9  # embedding + final norm, 9 per layer
    worst, expected, got = compare(tiny_run["merged"], out)
    assert worst == 0.0
    assert got == expected and len(set(expected)) > 1  # distinct, non-trivial answers


def test_f16_export_is_close(tiny_run):
    out = tiny_run["root"] / "f16" / "model.gguf"
    export_run(tiny_run["run"], out, outtype="f16")
    worst, expected, got = compare(tiny_run["merged"], out)
    assert 0.0 < worst < 0.05  # f16 rounding of weights of scale 0.2: measured 0.0086 on logits of scale ~5
    assert got == expected


def test_q8_0_export_loads_and_is_close(tiny_run):
    out = tiny_run["root"] / "q8" / "model.gguf"
    export_run(tiny_run["run"], out, outtype="q8_0")
    worst, expected, got = compare(tiny_run["merged"], out)
    # 8-bit blocks on a 32-wide model with weights of scale 0.2: measured 0.42 on logits of scale ~5.
    assert 0.0 < worst < 1.0
    same_first_tokens = sum(a[:4] == b[:4] for a, b in zip(expected, got))
    assert same_first_tokens >= len(PROMPTS) - 1


def test_gguf_metadata_and_tensor_layout(tiny_run):
    from gguf import GGMLQuantizationType, GGUFReader

    out = tiny_run["root"] / "meta" / "model.gguf"
    export_run(tiny_run["run"], out, outtype="q8_0")
    reader = GGUFReader(out)

    def value(key: str) -> Any:
        return reader.fields[key].contents()

    assert value("general.architecture") == "llama" and value("general.type") == "model"
    assert value("general.file_type") == 7  # MOSTLY_Q8_0
    assert (value("llama.block_count"), value("llama.embedding_length"), value("llama.feed_forward_length")) == (2, 32, 64)
    assert (value("llama.attention.head_count"), value("llama.attention.head_count_kv")) == (4, 2)
    assert value("llama.rope.dimension_count") == 8 and value("llama.vocab_size") == 267
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    assert value("tokenizer.ggml.merges") == [f"{a} {b}" for a, b in MERGES]
    tokens = value("tokenizer.ggml.tokens")
    assert len(tokens) == 267 and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] and tokens[-1] == "Ġs"
    assert value("tokenizer.ggml.token_type")[:4] == [3, 3, 3, 1]  # control x3, then normal
    assert (value("tokenizer.ggml.bos_token_id"), value("tokenizer.ggml.eos_token_id")) == (0, 2)
    assert value("tokenizer.ggml.add_bos_token") is False
    assert value("tokenizer.chat_template").startswith("{% for message in messages %}")
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert "output.weight" not in types  # tied embeddings: llama.cpp reuses token_embd
    assert types["token_embd.weight"] == GGMLQuantizationType.Q8_0
    assert types["blk.1.ffn_down.weight"] == GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32  # vectors stay f32
    assert sorted(types) == sorted(
        ["token_embd.weight", "output_norm.weight"]
        + [f"blk.{i}.{n}.weight" for i in range(2) for n in (
            "attn_q", "attn_k", "attn_v", "attn_output", "attn_norm", "ffn_gate", "ffn_up", "ffn_down", "ffn_norm")]
    )


def test_modelfile_for_chatml(tiny_run):
    out = tiny_run["root"] / "ollama" / "tiny.gguf"
    result = export_run(tiny_run["run"], out, outtype="f16")
    assert result.modelfile == out.parent / "Modelfile"
    text = result.modelfile.read_text()
    assert text.split("\n", 1)[1] == "\n".join([
        "FROM ./tiny.gguf",
        'TEMPLATE """{{ range .Messages }}'
        '{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
        '{{ end }}{{ end }}<|im_start|>assistant\n"""',
        'PARAMETER stop "<|im_end|>"',
        'PARAMETER stop "<|im_start|>"',
        "PARAMETER temperature 0",
        "PARAMETER num_predict 128",
        "",
    ])


def test_lora_gguf_holds_the_adapter_in_llama_cpp_layout(tiny_run):
    from gguf import GGUFReader, dequantize
    from safetensors.numpy import load_file

    out = tiny_run["root"] / "lora" / "adapter.gguf"
    result = export_run(tiny_run["run"], out, fmt="gguf-lora", outtype="f32")
    assert result.modelfile is None and result.tensors == 2 * 7 * 2  # A and B, 7 projections, 2 layers
    reader = GGUFReader(out)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 8.0
    lora = {t.name: np.asarray(t.data).reshape(tuple(reversed(t.shape.tolist()))) for t in reader.tensors}
    adapter = load_file(str(tiny_run["run"] / "adapter" / "adapter_model.safetensors"))
    a = adapter["base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"]
    b = adapter["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"]
    assert np.array_equal(lora["blk.1.attn_k.weight.lora_a"], a)
    assert np.array_equal(lora["blk.1.attn_k.weight.lora_b"], _permute_qk(b, 2))  # 2 kv heads
    assert np.array_equal(lora["blk.0.ffn_up.weight.lora_b"],
                          adapter["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"])
    # What llama.cpp computes, W + alpha / r * B A, in its own (permuted) layout, is the merged export.
    merged_path = tiny_run["root"] / "lora-merged" / "merged.gguf"
    write_gguf(tiny_run["merged"], merged_path, "f32")
    base = {t.name: dequantize(t.data, t.tensor_type) for t in GGUFReader(tiny_run["root"] / "base-gguf" / "base.gguf").tensors}
    merged = {t.name: dequantize(t.data, t.tensor_type) for t in GGUFReader(merged_path).tensors}
    names = {name.rsplit(".", 1)[0] for name in lora}
    assert len(names) == 14
    for name in names:
        composed = base[name] + 8 / 4 * lora[name + ".lora_b"] @ lora[name + ".lora_a"]
        np.testing.assert_allclose(composed, merged[name], atol=1e-5)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_exports_and_prints_where(capsys, tiny_run):
    out = tiny_run["root"] / "cli" / "tiny.gguf"
    code, stdout, err = run_cli(capsys, "export", str(tiny_run["run"]), "--output", str(out), "--outtype", "f32")
    assert code == 0, err
    assert f"Exported 20 tensors to {out}" in stdout and (out.parent / "Modelfile").is_file()
    assert f"llama.cpp: llama-cli -m {out} --temp 0\n" in stdout
    assert f"Ollama: ollama create NAME -f {out.parent / 'Modelfile'} && ollama run NAME" in stdout
    assert not list(out.parent.glob(".loratune-export-*")) and not out.with_name("tiny.gguf.partial").exists()


@pytest.mark.parametrize("argv,message", [
    (["--outtype", "q4_k"], "--outtype 'q4_k': choose one of f32, f16, q8_0, q4_0, q4_k_m, q5_k_m"),
    (["--format", "gguf-lora", "--outtype", "q4_k_m"], "--outtype q4_k_m applies to --format gguf"),
    (["--format", "onnx"], "--format 'onnx': choose one of gguf, gguf-lora"),
    (["--output", "{root}/model.bin"], "the file name must end in .gguf"),
    (["--output", "{root}/exists.gguf"], "already exists; choose another name or delete it"),
])
def test_cli_option_errors_are_one_line(capsys, tiny_run, argv, message):
    (tiny_run["root"] / "exists.gguf").write_text("")
    argv = [a.format(root=tiny_run["root"]) for a in argv]
    if "--output" not in argv:
        argv += ["--output", str(tiny_run["root"] / "never.gguf")]
    code, _, err = run_cli(capsys, "export", str(tiny_run["run"]), *argv)
    assert code == 1 and message in err
    assert err.startswith("loratune export: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_missing_run(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", str(tmp_path / "nope"), "--output", str(tmp_path / "m.gguf"))
    assert code == 1 and "no such run or adapter directory" in err and err.count("\n") == 1


def test_cli_refuses_t5(capsys, tmp_path, tiny_t5_dir):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir),
                           LoraConfig(r=2, target_modules=["q", "v"], task_type=TaskType.SEQ_2_SEQ_LM))
    model.save_pretrained(str(tmp_path / "run" / "adapter"))
    (tmp_path / "run" / "adapter" / "loratune.json").write_text(json.dumps({"base_model": str(tiny_t5_dir)}))
    capsys.readouterr()
    code, _, err = run_cli(capsys, "export", str(tmp_path / "run"), "--output", str(tmp_path / "t5.gguf"))
    assert code == 1 and "model_type 't5' cannot be exported to GGUF yet; supported: gemma3_text, llama" in err
    assert err.count("\n") == 1 and not (tmp_path / "t5.gguf").exists()


def test_tokenizer_without_merges_is_refused(tmp_path, tiny_llama_dir):
    with pytest.raises(ExportError, match="without merges"):
        write_gguf(tiny_llama_dir, tmp_path / "x.gguf", "f32")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_real_smollm2_trained_adapter_exports(tmp_path):
    """A few training steps on the real SmolLM2, then merge vs GGUF export (f32 exact, f16 close)."""
    from loratune.config import load_config
    from loratune.training.run import train_run

    cfg = load_config(ROOT / "configs/text2sql-smollm2.yaml", [
        "train.max_steps=3", "train.eval_steps=3", "train.eval_loss_rows=8", "train.batch_size=4",
        f"output_dir={tmp_path}", "name=smoke"])
    run = train_run(cfg).run_dir
    merged = merge_adapter(run, tmp_path / "merged")
    export_run(run, tmp_path / "f32" / "smol.gguf", outtype="f32")
    worst, expected, got = compare(merged, tmp_path / "f32" / "smol.gguf", new_tokens=20)
    assert worst < 1e-4 and got == expected
    export_run(run, tmp_path / "f16" / "smol.gguf", outtype="f16")
    worst16, _, got16 = compare(merged, tmp_path / "f16" / "smol.gguf", new_tokens=20)
    # Measured: 0.042, and 3 of 4 answers identical (the 4th splits at a near-tie, "A:" vs "A").
    assert worst16 < 0.5
    assert sum(a == b for a, b in zip(expected, got16)) >= len(PROMPTS) - 1
    modelfile = (tmp_path / "f16" / "Modelfile").read_text()
    assert "FROM ./smol.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
