"""train.compile: the decision, and that compiled layers train to the same numbers as plain ones."""

import json
import os
from pathlib import Path

import pytest
import torch
from run_helpers import make_cfg
from torch._inductor.runtime import cache_dir_utils
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from loratune.config import config_from_dict
from loratune.errors import ConfigError
from loratune.training.compilation import (
    compile_decision,
    compile_layers,
    decoder_layers,
    is_compiled,
    uncompile_layers,
    vec_isa_name,
)
from loratune.training.run import train_run


def cfg_with(**train):
    return config_from_dict({"name": "r", "model": "m", "task": "prompt-completion",
                             "data": {"train": "t.jsonl"}, "train": train})


@pytest.mark.parametrize("train, kw, on, words", [
    ({"max_minutes": 6}, {}, True, "train.max_minutes=6 (>= 3)"),
    ({"max_minutes": 2}, {}, False, "train.max_minutes=2 (< 3)"),
    ({"max_steps": 200}, {}, True, "200 steps (>= 150)"),
    ({"epochs": 2, "batch_size": 8}, {"train_rows": 400}, False, "100 steps (< 150)"),
    ({"epochs": 3, "batch_size": 8}, {"train_rows": 400}, True, "150 steps (>= 150)"),
    ({"max_minutes": 6}, {"device": "cuda"}, False, "device cuda"),
    ({"max_minutes": 6}, {"model_type": "seq2seq"}, False, "seq2seq model"),
    ({"max_minutes": 6}, {"world_size": 2}, False, "2 processes"),
    ({"max_minutes": 6, "gradient_checkpointing": True}, {}, False, "train.gradient_checkpointing"),
    ({"compile": True}, {"device": "cuda"}, True, "measured slower than uncompiled"),
    ({"compile": True}, {}, True, "train.compile: true"),
    ({"compile": False, "max_minutes": 60}, {}, False, "train.compile: false"),
])
def test_auto_compiles_long_causal_cpu_runs_only(train, kw, on, words):
    args = {"model_type": "causal", "device": "cpu", "train_rows": 1000, "world_size": 1, **kw}
    decided, why = compile_decision(cfg_with(**train), **args)
    assert decided is on
    assert words in why


def test_compile_setting_is_validated_by_key():
    with pytest.raises(ConfigError, match="train.compile"):
        cfg_with(compile="yes")


def test_layers_compile_in_place_and_uncompile(tiny_llama_dir):
    from loratune.models.load import load_model

    model = load_model(str(tiny_llama_dir), device="cpu").model
    names = [n for n, _ in model.named_parameters()]
    assert compile_layers(model) == 2 and all(is_compiled(m) for m in decoder_layers(model))
    assert model.config.use_cache is False
    assert [n for n, _ in model.named_parameters()] == names  # saving sees the same names
    uncompile_layers(model)
    assert not any(is_compiled(m) for m in decoder_layers(model)) and model.config.use_cache is True


def test_compiled_training_matches_plain_training(tmp_path, tiny_llama_dir, monkeypatch):
    """Same seed, same rows: the compiled run's losses and adapter equal the plain run's within
    float tolerance (fp32 here; under bf16 fusion changes roundings, so only closeness is asked)."""
    from safetensors.torch import load_file

    # The inductor cache would let a later run skip compiling; a fresh one makes this run compile.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    runs = {}
    for compiled in (False, True):
        cfg = make_cfg(tmp_path, tiny_llama_dir, name=f"c{compiled}", max_steps=8, compile=compiled,
                       eval_steps=4, precision="fp32")
        messages = []
        result = train_run(cfg, log=messages.append)
        assert result.summary["compiled"] is compiled
        assert any(f"train.compile: {str(compiled).lower()}" in m for m in messages)
        records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        runs[compiled] = ([r["loss"] for r in records if "loss" in r],
                          [r["eval_loss"] for r in records if "eval_loss" in r],
                          load_file(result.run_dir / "adapter" / "adapter_model.safetensors"))
    (plain_loss, plain_eval, plain_w), (comp_loss, comp_eval, comp_w) = runs[False], runs[True]
    assert len(comp_loss) == len(plain_loss) >= 1 and len(comp_eval) == len(plain_eval) == 3
    assert comp_loss == pytest.approx(plain_loss, rel=1e-4)
    assert comp_eval == pytest.approx(plain_eval, rel=1e-4)
    assert comp_w.keys() == plain_w.keys()
    # atol 1e-4: Adam divides each gradient by its own running scale, so a rounding difference in a
    # near-zero gradient (the fused loss's order of operations differs in the last bits between the
    # compiled and the eager graph) moves that weight by up to ~5e-5 over eight steps.
    for key in plain_w:
        torch.testing.assert_close(comp_w[key], plain_w[key], rtol=1e-3, atol=1e-4)
    # training changed the adapter (so equality above is not two untouched initialisations)
    assert any(float(plain_w[k].abs().max()) > 0 for k in plain_w if "lora_B" in k)


def test_one_graph_serves_every_layer_and_width(tiny_llama_dir, tmp_path, monkeypatch):
    """The point of compiling per layer: 5 layers x 3 batch widths compile 1 graph, not one per
    layer; the first layer too, although its input (the frozen embeddings' output) needs no
    gradient of its own (without `compile_layers`' input-gradient hook it would be a second graph).
    A KV cache in training makes each layer guard on its own cache slot: 5 graphs, and past 8 torch
    gives up compiling."""
    import torch._dynamo.utils as dynamo_utils
    from transformers import AutoConfig, LlamaForCausalLM

    from loratune.config import LoraSettings
    from loratune.models.lora import apply_lora

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    config = AutoConfig.from_pretrained(tiny_llama_dir)
    config.num_hidden_layers = 5
    torch.manual_seed(0)
    model = apply_lora(LlamaForCausalLM(config), "causal", LoraSettings(r=4, alpha=8, dropout=0.0)).train()
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    assert compile_layers(model) == 5
    for width in (7, 11, 5):
        ids = torch.randint(0, config.vocab_size, (3, width))
        model(input_ids=ids, labels=ids).loss.backward()
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 1
    uncompile_layers(model)


def test_the_input_gradient_hook_is_added_for_compiling_and_removed_after(tiny_llama_dir):
    """compile_layers makes the embeddings' output require a gradient (one graph for every layer);
    uncompile_layers takes that hook away again, but leaves one that gradient checkpointing set."""
    from loratune.config import LoraSettings
    from loratune.models.load import load_model
    from loratune.models.lora import apply_lora

    def embeddings_output_requires_grad(model):
        seen = []
        handle = model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
        model(input_ids=torch.tensor([[1, 2, 3]]))
        handle.remove()
        return seen[-1]

    model = apply_lora(load_model(str(tiny_llama_dir), device="cpu").model, "causal",
                       LoraSettings(r=4, alpha=8, dropout=0.0))
    assert not embeddings_output_requires_grad(model)  # frozen embeddings: no gradient by default
    compile_layers(model)
    uncompile_layers(model)  # compiling happens at the first call; this checks the hook alone
    assert not embeddings_output_requires_grad(model)
    compile_layers(model)
    for layer in decoder_layers(model):  # run uncompiled, hook in place: what the compiled graph sees
        layer._compiled_call_impl = None
    assert embeddings_output_requires_grad(model)
    uncompile_layers(model)
    assert not embeddings_output_requires_grad(model)

    model.enable_input_require_grads()  # as train.gradient_checkpointing does
    compile_layers(model)
    uncompile_layers(model)
    assert embeddings_output_requires_grad(model)  # not compile_layers' hook: it stays


def test_a_compiled_run_keeps_one_attention_and_compiles_one_graph(tmp_path, tiny_llama_dir, monkeypatch):
    """Uncompiled, attention is chosen per batch width; compiled, each implementation would be a
    graph of its own to compile, so the run keeps the one that 90% of its rows fit."""
    import torch._dynamo.utils as dynamo_utils

    import loratune.training.attention as attention
    import loratune.training.trainer as trainer_module

    # TORCHINDUCTOR_CACHE_DIR holding torch's default, as importing transformers leaves it: the
    # compiled code goes to loratune's cache (compile_cache_dir) all the same.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    monkeypatch.setenv("LORATUNE_CACHE", str(tmp_path / "cache"))
    seen = {}
    real = attention.use_attention_for

    def spy(model, device, width, fixed=None):
        real(model, device, width, fixed)
        seen.setdefault(name, []).append((width, model.config._attn_implementation))

    monkeypatch.setattr(attention, "use_attention_for", spy)
    monkeypatch.setattr(trainer_module, "use_attention_for", spy)
    # 19 short rows and one long one: 90% of the rows are short.
    rows = [{"prompt": "Fruit of colour red:", "completion": " apple"}] * 19 + [
        {"prompt": "Fruit of the colour that ripe bananas and lemons and the sun have:", "completion": " banana"}]
    graphs, messages = {}, []
    for name, compiled in (("plain", False), ("compiled", True)):
        cfg = make_cfg(tmp_path, tiny_llama_dir, name=name, max_steps=8, compile=compiled, eval_steps=100,
                       precision="fp32", batch_size=4)
        Path(cfg.data.train).write_text("".join(json.dumps(r) + "\n" for r in rows))
        if compiled:  # eager up to just under the long row's width, as for the demo's rows over 256
            monkeypatch.setattr(attention, "EAGER_ATTENTION_MAX_TOKENS", max(w for w, _ in seen["plain"]) - 1)
        torch._dynamo.reset()
        dynamo_utils.counters.clear()
        train_run(cfg, log=messages.append)
        graphs[name] = dynamo_utils.counters["stats"]["unique_graphs"]
    wide = [impl for w, impl in seen["compiled"] if w > attention.EAGER_ATTENTION_MAX_TOKENS]
    assert wide and set(wide) == {"eager"}  # the long row's batches trained with the run's choice
    assert {impl for _, impl in seen["compiled"]} == {"eager"}
    assert attention.attention_for("cpu", max(w for w, _ in seen["compiled"])) == "sdpa"  # per batch it would switch
    assert any("eager attention for every batch" in m for m in messages)
    assert graphs == {"plain": 0, "compiled": 1}  # every layer one graph (test above); two attentions: 2
    cached = [p for p in (tmp_path / "cache" / "torchinductor" / vec_isa_name()).rglob("*") if p.is_file()]
    assert cached, "inductor's compiled code should be cached under LORATUNE_CACHE/torchinductor/<ISA>"


def test_the_compile_cache_is_loratunes_unless_torchinductor_cache_dir_is_set(tmp_path, monkeypatch):
    from loratune.training.compilation import compile_cache_dir

    monkeypatch.setenv("LORATUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache_dir() == tmp_path / "mine"  # the user's choice stands
    ours = tmp_path / "cache" / "torchinductor" / vec_isa_name()
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert compile_cache_dir() == ours
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(ours)  # what torch reads
    # torch writes its own default into the variable when it first looks (importing transformers
    # does): that is not a choice, and loratune's cache replaces it.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert compile_cache_dir() == ours
    assert cache_dir_utils.cache_dir() == str(ours)  # where torch now caches


def test_a_real_process_caches_compiled_code_in_loratunes_folder(tmp_path):
    """In a fresh process, as `loratune train` runs: importing transformers and peft already set the
    variable to torch's default, which is not the user's choice (commit fad0b59 took it for one)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["LORATUNE_CACHE"] = str(tmp_path / "cache")
    script = ("import os, peft, transformers\n"
              "from loratune.training.compilation import compile_cache_dir\n"
              "from torch._inductor.runtime.cache_dir_utils import cache_dir\n"
              "print(compile_cache_dir()); print(cache_dir())")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    ours = str(tmp_path / "cache" / "torchinductor" / vec_isa_name())
    assert out.stdout.split() == [ours, ours]


def test_each_vector_isa_compiles_into_a_cache_of_its_own(tmp_path, monkeypatch):
    """A cache written where inductor generates AVX-512 code, read where it generates AVX2 code,
    trained SmolLM2 with NaN losses (docs/log.md, 2026-11-27, commit d349e3e): machines sharing
    ~/.cache must not share compiled code."""
    from loratune.training.compilation import compile_cache_dir

    monkeypatch.setenv("LORATUNE_CACHE", str(tmp_path / "cache"))
    folders = set()
    for capability in ("avx2", "default"):  # torch's own switch; every x86-64 CPU here has AVX2
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability)
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        folders.add(compile_cache_dir())
    assert {folder.name for folder in folders} == {"avx2", "invalid_vec_isa"}
    assert {folder.parent for folder in folders} == {tmp_path / "cache" / "torchinductor"}


def test_without_a_cpp_compiler_auto_stays_off_and_true_fails_before_loading(tmp_path, tiny_llama_dir, monkeypatch):
    import loratune.training.compilation as compilation
    import loratune.training.run as train_module

    monkeypatch.setattr(compilation, "cpp_compiler", lambda: None)
    on, why = compile_decision(cfg_with(max_minutes=10), model_type="causal", device="cpu", train_rows=100)
    assert not on and "no C++ compiler" in why
    monkeypatch.setattr(train_module, "load_model", lambda *a, **k: pytest.fail("loaded weights before the check"))
    cfg = make_cfg(tmp_path, tiny_llama_dir, compile=True)
    with pytest.raises(ConfigError, match=r"train.compile: true needs a C\+\+ compiler"):
        train_run(cfg, log=lambda *_: None)
    assert not (tmp_path / "runs" / "run").exists()


def test_a_budgeted_compiled_run_fits_after_three_timed_steps(tmp_path, tiny_llama_dir, monkeypatch):
    """train.max_minutes with compiling: the time budget waits for three timed steps before an
    early fit (a second compiling step would otherwise set the pace); uncompiled runs need one."""
    import loratune.training.time_budget as time_budget_module

    seen = {}

    class Recording(time_budget_module.TimeBudget):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen[cfg.name] = self.early_fit_after

    import loratune.training.run as train_module

    monkeypatch.setattr(train_module, "TimeBudget", Recording)
    # What is checked is the wiring, so the decision stands in for compiling (tested above).
    monkeypatch.setattr(train_module, "compile_for_training", lambda plan, *a: plan.cfg.train.compile)
    for compiled in (True, False):
        cfg = make_cfg(tmp_path, tiny_llama_dir, name=f"b{compiled}", max_steps=3, max_minutes=0.5,
                       compile=compiled, eval_steps=100, precision="fp32")
        assert train_run(cfg, log=lambda *_: None).summary["compiled"] is compiled
    assert seen == {"bTrue": 3, "bFalse": 1}
