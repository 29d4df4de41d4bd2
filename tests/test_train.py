"""Training end to end on tiny models: the loss falls, the run directory holds what it should."""

import json

import pytest
import torch
import yaml

from loratune.config import config_from_dict
from loratune.errors import AdapterError, ConfigError
from loratune.train import resolve_precision, train_run

PAIRS = [("red", "apple"), ("yellow", "banana"), ("green", "lime"), ("purple", "grape"),
         ("orange", "orange"), ("brown", "kiwi")]


def memorise_file(tmp_path, repeat=6):
    rows = [{"prompt": f"Fruit of colour {c}:", "completion": f" {f}"} for c, f in PAIRS] * repeat
    path = tmp_path / "fruit.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_cfg(tmp_path, model_dir, name="run", **train):
    data = memorise_file(tmp_path)
    return config_from_dict({
        "name": name, "model": str(model_dir), "task": "prompt-completion", "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(data), "eval": str(data), "max_eval_rows": 6, "use_chat_template": False},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 30, "lr": 1e-2, "batch_size": 6, "logging_steps": 5, "eval_steps": 15,
                  "warmup_ratio": 0.0, "seed": 3, **train},
    })


def train_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r], [r["eval_loss"] for r in records if "eval_loss" in r]


@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_t5_dir"])
def test_loss_falls_and_run_dir_is_complete(tmp_path, which, request):
    model_dir = request.getfixturevalue(which)
    cfg = make_cfg(tmp_path, model_dir, lr=3e-2 if which == "tiny_t5_dir" else 1e-2)
    result = train_run(cfg, log=lambda *_: None)
    run_dir = result.run_dir
    losses, eval_losses = train_losses(run_dir)
    assert losses[-1] < 0.6 * losses[0]
    assert result.summary["eval_loss_end"] < result.summary["eval_loss_start"]
    assert eval_losses[0] == pytest.approx(result.summary["eval_loss_start"])
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/loratune.json",
                 "config.yaml", "metrics.jsonl", "data_stats.json", "run_summary.json"):
        assert (run_dir / name).is_file(), name
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 30 and saved["lora"]["r"] == 8
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["trainable_line"].startswith("Trainable parameters ")
    assert summary["train_tokens"] > 0 and summary["steps"] == 30
    assert summary["kind"] == ("seq2seq" if which == "tiny_t5_dir" else "causal")


def adapter_logits(model_dir, adapter_dir, kind_inputs):
    from peft import PeftModel

    from loratune.models import load_model

    loaded = load_model(str(model_dir))
    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).eval()
    with torch.no_grad():
        return model(**kind_inputs).logits


def test_saved_adapter_reloads_identically_and_continuing_changes_it(tmp_path, tiny_llama_dir):
    from peft import PeftModel
    from safetensors.torch import load_file

    cfg = make_cfg(tmp_path, tiny_llama_dir, name="first", max_steps=10)
    first = train_run(cfg, log=lambda *_: None).run_dir
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 8, 9]])}
    a = adapter_logits(tiny_llama_dir, first / "adapter", inputs)
    b = adapter_logits(tiny_llama_dir, first / "adapter", inputs)
    assert torch.equal(a, b)

    # Continue from the first adapter: it starts from those weights (no fresh init) ...
    from loratune.lora import apply_lora
    from loratune.models import load_model

    cont_cfg = make_cfg(tmp_path, tiny_llama_dir, name="second", max_steps=10)
    cont_cfg.lora.init_adapter = str(first)
    start_model = apply_lora(load_model(str(tiny_llama_dir)).model, "causal", cont_cfg.lora)
    with torch.no_grad():
        assert torch.equal(start_model(**inputs).logits, a)
    # ... and training changes them, and the lineage is recorded.
    second = train_run(cont_cfg, log=lambda *_: None).run_dir
    w1 = load_file(first / "adapter" / "adapter_model.safetensors")
    w2 = load_file(second / "adapter" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    assert json.loads((second / "run_summary.json").read_text())["init_adapter"] == str(first)
    assert json.loads((second / "adapter" / "loratune.json").read_text())["init_adapter"] == str(first)


def test_existing_run_is_not_clobbered_and_resume_works(tmp_path, tiny_llama_dir):
    cfg = make_cfg(tmp_path, tiny_llama_dir, name="keep", max_steps=6, eval_steps=3)
    run_dir = train_run(cfg, log=lambda *_: None).run_dir
    before = (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(AdapterError, match="already holds a trained adapter.*--overwrite"):
        train_run(cfg, log=lambda *_: None)
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == before
    cfg.train.max_steps = 9
    result = train_run(cfg, resume=True, log=lambda *_: None)
    assert result.summary["steps"] == 9
    assert result.summary["eval_loss_start"] is not None  # kept from the first session


def test_zero_targets_is_an_error(tmp_path, tiny_llama_dir):
    cfg = make_cfg(tmp_path, tiny_llama_dir, name="none")
    cfg.lora.target_modules = ["no_such_module"]
    with pytest.raises(AdapterError, match="lora.target_modules"):
        train_run(cfg, log=lambda *_: None)


def test_precision_rules(tmp_path, tiny_t5_dir):
    cfg = make_cfg(tmp_path, tiny_t5_dir, precision="fp16")
    with pytest.raises(ConfigError, match="fp16 overflows in T5"):
        resolve_precision(cfg, "seq2seq", "cpu")
    cfg.train.precision = "fp32"
    assert resolve_precision(cfg, "seq2seq", "cpu") == "fp32"
    cfg.train.precision = "auto"
    from loratune.models import bf16_supported

    assert resolve_precision(cfg, "causal", "cpu") == ("bf16" if bf16_supported("cpu") else "fp32")


def test_completion_only_logits_give_the_models_own_loss(tmp_path, tiny_llama_dir):
    """The fast loss (logits only from the first answer position) equals transformers' loss."""
    from transformers import DataCollatorForSeq2Seq, TrainingArguments

    from loratune.config import DataConfig
    from loratune.data import tokenize_rows
    from loratune.models import load_model
    from loratune.tasks import get_task
    from loratune.train import CompletionLossTrainer

    loaded = load_model(str(tiny_llama_dir))
    rows = [{"prompt": "short", "completion": "answer one"},
            {"prompt": "a much longer prompt than the other", "completion": "two"}]
    features, _ = tokenize_rows(rows, get_task("prompt-completion"), loaded.tokenizer, "causal", DataConfig())
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
