"""GGUF exports run in llama.cpp itself (node-llama-cpp's prebuilt libllama, 2 threads) and answer as
loratune's merged model does.

Each check tokenizes the same chat prompts in both (the ids must agree), decodes greedily in both, and
compares the answers token by token. llama.cpp stops at any end-of-generation token; the reference
is decoded for the full length, and an answer counts as the same when llama.cpp's tokens are the
reference's up to where llama.cpp stopped, at a special token of the reference.

llama.cpp missing: the tests fail under CI=true and skip elsewhere (`make llama-runtime` installs it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from loratune.data import encode_prompt
from loratune.export.gguf import export_run, write_gguf
from loratune.export.llama_runtime import Completion, complete, missing_reason
from loratune.models.lora import merge_adapter
from tiny_models import add_random_adapter, build_tiny_bpe_llama, build_tiny_gemma3

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What is 2+2?", "Name the capital of France.", "the theater in the inn", "héllo, SELECT * FROM t;",
    "List three colours.", "SELECT name FROM head WHERE age > 56", "Translate 'cat' to German.",
    "How many legs does a spider have?", "Write a haiku about the sea.", "the other one, then",
]
NEW_TOKENS = 12


@pytest.fixture(scope="module", autouse=True)
def llama_cpp() -> None:
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def chat_texts(model_dir: Path, questions: list[str] = QUESTIONS) -> list[str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions]


def reference_answers(model_dir: Path, texts: list[str], new_tokens: int = NEW_TOKENS) -> tuple[list[list[int]], Any]:
    """loratune's side: prompt ids as training and evaluation encode them, and argmax decoding in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers = []
    for text in texts:
        ids = encode_prompt(tokenizer, text)
        with torch.no_grad():
            for _ in range(new_tokens):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        answers.append(ids)
    return answers, tokenizer


def same_answer(got: Completion, reference: list[int], special_ids: set[int]) -> bool:
    answer = reference[len(got.prompt_tokens):]
    stop = len(got.tokens)
    return answer[:stop] == got.tokens and (stop == len(answer) or answer[stop] in special_ids)


def agreement(got: list[Completion], references: list[list[int]], tokenizer: Any) -> int:
    """How many answers are the same; the prompts' token ids must be the same in both."""
    for completion, reference in zip(got, references, strict=True):
        assert completion.prompt_tokens == reference[: len(completion.prompt_tokens)], tokenizer.decode(reference)
    return sum(same_answer(c, r, set(tokenizer.all_special_ids)) for c, r in zip(got, references))


def build_run(root: Path, builder: Any) -> dict[str, Path]:
    """A tiny base, a random non-zero LoRA on every projection, the merged model, and greedy answers."""
    base = builder(root / "base")
    run = add_random_adapter(base, root / "run")
    merged = merge_adapter(run, root / "merged")
    return {"root": root, "base": base, "run": run, "merged": merged}


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    paths = build_run(tmp_path_factory.mktemp("llamacpp-llama"), build_tiny_bpe_llama)
    texts = chat_texts(paths["merged"])
    return {**paths, "texts": texts, "reference": reference_answers(paths["merged"], texts)}


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    paths = build_run(tmp_path_factory.mktemp("llamacpp-gemma"), build_tiny_gemma3)
    # Over 16 tokens, so the sliding layers' window (16) cuts the longer prompts.
    texts = chat_texts(paths["merged"], [q + " Answer in one short sentence, please." for q in QUESTIONS])
    return {**paths, "texts": texts, "reference": reference_answers(paths["merged"], texts)}


def test_llama_f32_export_answers_as_merged_model(llama_run):
    out = llama_run["root"] / "f32" / "model.gguf"
    export_run(llama_run["run"], out, outtype="f32")
    got = complete(out, llama_run["texts"], max_tokens=NEW_TOKENS)
    references, tokenizer = llama_run["reference"]
    assert agreement(got, references, tokenizer) == len(QUESTIONS)
    assert len({c.text for c in got}) > 1  # distinct, non-trivial answers
    assert [c.text for c in got] == [tokenizer.decode(c.tokens) for c in got]


def test_llama_f16_answers_as_merged_model_on_90_percent(llama_run):
    # q8_0 is held to 90% on the real model only (the slow test): this random model's logits are so
    # close to ties that 8-bit weights and activations change 8 of its 10 answers (measured).
    out = llama_run["root"] / "f16" / "model.gguf"
    export_run(llama_run["run"], out, outtype="f16")
    got = complete(out, llama_run["texts"], max_tokens=NEW_TOKENS)
    references, tokenizer = llama_run["reference"]
    assert agreement(got, references, tokenizer) >= 0.9 * len(QUESTIONS)


def test_llama_lora_on_base_gguf_answers_as_merged_export(llama_run):
    root = llama_run["root"]
    write_gguf(llama_run["base"], root / "base-gguf" / "base.gguf", "f32")
    export_run(llama_run["run"], root / "lora" / "adapter.gguf", fmt="gguf-lora", outtype="f32")
    merged = root / "lora-merged" / "model.gguf"
    export_run(llama_run["run"], merged, outtype="f32")
    with_lora = complete(root / "base-gguf" / "base.gguf", llama_run["texts"], lora=root / "lora" / "adapter.gguf",
                         max_tokens=NEW_TOKENS)
    assert with_lora == complete(merged, llama_run["texts"], max_tokens=NEW_TOKENS)


def test_gemma3_f32_export_answers_as_merged_model(gemma_run):
    from gguf import GGUFReader

    out = gemma_run["root"] / "f32" / "model.gguf"
    result = export_run(gemma_run["run"], out, outtype="f32")
    reader = GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "gemma3"
    assert reader.fields["gemma3.attention.sliding_window"].contents() == 16
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.add_bos_token"].contents() is True
    assert result.tensors == 3 + 6 * 13  # embedding, output, final norm; 7 projections, 6 norms per layer
    got = complete(out, gemma_run["texts"], max_tokens=NEW_TOKENS)
    references, tokenizer = gemma_run["reference"]
    assert max(len(c.prompt_tokens) for c in got) > 16
    assert agreement(got, references, tokenizer) == len(QUESTIONS)
    # Texts are not compared: this random model answers mostly in byte tokens, whose invalid UTF-8
    # runs transformers and llama.cpp show differently ('�' per token against per byte sequence).
    assert len({tuple(c.tokens) for c in got}) > 1


def test_gemma3_lora_on_base_gguf_answers_as_merged_export(gemma_run):
    root = gemma_run["root"]
    write_gguf(gemma_run["base"], root / "base-gguf" / "base.gguf", "f32")
    export_run(gemma_run["run"], root / "lora" / "adapter.gguf", fmt="gguf-lora", outtype="f32")
    merged = root / "lora-merged" / "model.gguf"
    export_run(gemma_run["run"], merged, outtype="f32")
    with_lora = complete(root / "base-gguf" / "base.gguf", gemma_run["texts"], lora=root / "lora" / "adapter.gguf",
                         max_tokens=NEW_TOKENS)
    assert with_lora == complete(merged, gemma_run["texts"], max_tokens=NEW_TOKENS)


@pytest.fixture(scope="module")
def wide_llama_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A Llama 256 wide: rows of 256 values, which k-quants take whole (a 32-wide one falls back to q5_0)."""
    paths = build_run(tmp_path_factory.mktemp("llamacpp-wide"),
                      lambda path: build_tiny_bpe_llama(path, hidden_size=256))
    f32 = paths["root"] / "f32" / "model.gguf"
    export_run(paths["run"], f32, outtype="f32")
    texts = chat_texts(paths["merged"])
    return {**paths, "texts": texts, "f32": complete(f32, texts, max_tokens=NEW_TOKENS)}


@pytest.mark.parametrize("outtype,matrix_type", [("q8_0", "Q8_0"), ("q4_0", "Q4_0"), ("q4_k_m", "Q4_K"),
                                                 ("q5_k_m", "Q5_K")])
def test_quantized_export_loads_and_answers_in_llama_cpp(wide_llama_run, outtype, matrix_type):
    from gguf import GGUFReader, LlamaFileType

    out = wide_llama_run["root"] / outtype / "model.gguf"
    result = export_run(wide_llama_run["run"], out, outtype=outtype)
    assert result.tensors == 20 and not list(out.parent.glob(".loratune-export-*"))
    reader = GGUFReader(out)
    assert reader.fields["general.file_type"].contents() == LlamaFileType[f"MOSTLY_{outtype.upper()}"]
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == matrix_type and types["blk.0.attn_norm.weight"] == "F32"
    got = complete(out, wide_llama_run["texts"], max_tokens=NEW_TOKENS)
    assert all(c.tokens for c in got)
    # The first answer token as the f32 export's: measured 5, 5 and 6 of 10 for q4_0, q4_k_m, q5_k_m on
    # this random model, whose top logits are near ties (by chance: 1 in 267 per prompt).
    same_first = sum(c.tokens[:1] == f.tokens[:1] for c, f in zip(got, wide_llama_run["f32"]))
    assert same_first >= 0.3 * len(QUESTIONS)


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="fresh clone 2026-12-08 (AMD EPYC, AVX2 only, c1005a8): the f32 "
                   "export's 48-token greedy answers did not all equal the merged model's in llama.cpp; not yet diagnosed (issue 36)")
def test_real_smollm2_trained_adapter_in_llama_cpp(tmp_path):
    """A few training steps on the real SmolLM2, then 10 shipped SQL questions in llama.cpp against
    `loratune merge`'s model: f32 all the same, f16 and q8_0 at least 9 of 10, gguf-lora on an f32
    GGUF of the base the same as the merged f32 export."""
    from loratune.config import load_config
    from loratune.data import eval_prompts, read_rows
    from loratune.models.builtin import cached_model_path
    from loratune.tasks import get_task
    from loratune.training.run import train_run

    cfg = load_config(ROOT / "configs/text2sql-smollm2.yaml", [
        "train.max_steps=3", "train.eval_steps=3", "train.eval_loss_rows=8", "train.batch_size=4",
        f"output_dir={tmp_path}", "name=smoke"])
    run = train_run(cfg).run_dir
    merged = merge_adapter(run, tmp_path / "merged")
    from transformers import AutoTokenizer

    rows = read_rows(str(ROOT / cfg.data.eval))[:10]
    texts = eval_prompts(rows, get_task(cfg.task), AutoTokenizer.from_pretrained(merged), "llama", cfg.data)
    references, tokenizer = reference_answers(merged, texts, new_tokens=48)
    for outtype, needed in (("f32", 10), ("f16", 9), ("q8_0", 9)):
        out = tmp_path / outtype / "smol.gguf"
        export_run(run, out, outtype=outtype)
        got = complete(out, texts, max_tokens=48, context_size=1024)
        same = agreement(got, references, tokenizer)
        assert same >= needed, f"{outtype}: {same} of {len(texts)} answers as the merged model's"
    base_gguf = tmp_path / "base" / "base.gguf"
    write_gguf(cached_model_path("smollm2-135m-instruct"), base_gguf, "f32")
    export_run(run, tmp_path / "lora" / "smol-lora.gguf", fmt="gguf-lora", outtype="f32")
    with_lora = complete(base_gguf, texts, lora=tmp_path / "lora" / "smol-lora.gguf", max_tokens=48, context_size=1024)
    assert with_lora == complete(tmp_path / "f32" / "smol.gguf", texts, max_tokens=48, context_size=1024)
