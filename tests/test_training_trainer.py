"""The Trainer pieces: completion-only loss (training and loss-only evaluation), precision rules, evaluation batches."""

import types

import pytest
import torch
from run_helpers import make_cfg

from loratune.errors import ConfigError
from loratune.models.precision import resolve_precision
from loratune.training.trainer import EvalBatchFollowsTrain, evaluate_fitting


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


def test_completion_only_logits_give_the_models_own_loss(tmp_path, tiny_llama_dir):
    """The fast loss (logits only from the first answer position) equals transformers' loss."""
    from transformers import DataCollatorForSeq2Seq, TrainingArguments

    from loratune.config import DataSettings
    from loratune.data import tokenize_rows
    from loratune.models.load import load_model
    from loratune.tasks import get_task
    from loratune.training.trainer import CompletionLossTrainer

    loaded = load_model(str(tiny_llama_dir), device="cpu")
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


def test_loss_only_evaluation_skips_the_logits_and_predictions_keep_them(tmp_path, tiny_llama_dir, monkeypatch):
    """An evaluation for the loss alone takes the chunked path (no logits); one that wants
    predictions still gets the vocabulary logits; both give the model's own loss."""
    from transformers import DataCollatorForSeq2Seq, TrainingArguments

    import loratune.training.loss as loss_module
    from loratune.config import DataSettings
    from loratune.data import tokenize_rows
    from loratune.models.load import load_model
    from loratune.tasks import get_task
    from loratune.training.loss import fused_loss_supported
    from loratune.training.trainer import CompletionLossTrainer

    loaded = load_model(str(tiny_llama_dir), device="cpu")
    loaded.model.requires_grad_(False)  # frozen, as under LoRA: the chunked loss can serve it
    assert fused_loss_supported(loaded.model)
    rows = [{"prompt": "short", "completion": "answer one"},
            {"prompt": "a much longer prompt than the other", "completion": "two"}]
    features, _ = tokenize_rows(rows, get_task("prompt-completion"), loaded.tokenizer, "causal", DataSettings())
    batch = DataCollatorForSeq2Seq(loaded.tokenizer, label_pad_token_id=-100, padding=True)(features)
    trainer = CompletionLossTrainer(model=loaded.model, args=TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[]))
    with torch.no_grad():
        expected = loaded.model(**batch).loss
    chunked = []
    real = loss_module.vocab_cross_entropy
    monkeypatch.setattr(loss_module, "vocab_cross_entropy", lambda *a, **k: chunked.append(1) or real(*a, **k))
    loss_only, no_logits, no_labels = trainer.prediction_step(loaded.model, dict(batch), prediction_loss_only=True)
    assert len(chunked) == 1 and no_logits is None and no_labels is None
    loss, logits, labels = trainer.prediction_step(loaded.model, dict(batch), prediction_loss_only=False)
    assert len(chunked) == 1  # the logits were computed
    assert logits.shape[-1] == loaded.model.config.vocab_size
    assert torch.allclose(loss_only, expected, atol=1e-5) and torch.allclose(loss, expected, atol=1e-5)
    assert not trainer._loss_only  # reset after each batch


class _OutOfMemoryAbove:
    """A stand-in Trainer whose evaluation runs out of CUDA memory above `limit` rows per batch
    (the error text is the one PyTorch's CUDA allocator raises)."""

    def __init__(self, limit: int, start: int, auto: bool = True) -> None:
        self.limit, self.tried = limit, []
        self.args = types.SimpleNamespace(auto_find_batch_size=auto, per_device_eval_batch_size=start)

    def evaluate(self) -> dict[str, float]:
        size = self.args.per_device_eval_batch_size
        self.tried.append(size)
        if size > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.80 GiB")
        return {"eval_loss": 1.0}


def test_auto_batch_evaluation_shrinks_until_it_fits():
    trainer = _OutOfMemoryAbove(limit=40, start=64)
    assert evaluate_fitting(trainer) == {"eval_loss": 1.0}
    assert trainer.tried == [64, 57, 51, 45, 40]  # accelerate's search: 10% smaller per failure
    assert trainer.args.per_device_eval_batch_size == 40


def test_fixed_batch_evaluation_lets_out_of_memory_through():
    trainer = _OutOfMemoryAbove(limit=40, start=64, auto=False)
    with pytest.raises(torch.OutOfMemoryError):
        evaluate_fitting(trainer)
    assert trainer.tried == [64]


def test_eval_batch_follows_the_training_batch_auto_found():
    args = types.SimpleNamespace(per_device_eval_batch_size=64)
    EvalBatchFollowsTrain().on_train_begin(args, types.SimpleNamespace(train_batch_size=23), None)
    assert args.per_device_eval_batch_size == 23
    EvalBatchFollowsTrain().on_train_begin(args, types.SimpleNamespace(train_batch_size=None), None)
    assert args.per_device_eval_batch_size == 23


@pytest.mark.parametrize("completion_only", [True, False])
def test_every_causal_training_step_picks_its_attention(tmp_path, tiny_llama_dir, monkeypatch, completion_only):
    """Both causal Trainers choose the attention per batch width (eager for short CPU batches).
    The completion-loss Trainer once defined its own compute_loss, which shadowed the choice."""
    import loratune.training.attention as attention
    import loratune.training.trainer as trainer_module
    from loratune.training.run import train_run

    chosen = []
    real = attention.use_attention_for

    def spy(model, device, width, fixed=None):
        assert fixed is None  # uncompiled: the choice is per batch
        real(model, device, width, fixed)
        chosen.append((device, width, model.config._attn_implementation))

    monkeypatch.setattr(attention, "use_attention_for", spy)
    monkeypatch.setattr(trainer_module, "use_attention_for", spy)
    cfg = make_cfg(tmp_path, tiny_llama_dir, max_steps=4, eval_steps=100, completion_only_logits=completion_only)
    train_run(cfg, log=lambda *_: None)
    assert len(chosen) >= 4  # every training step (and the evaluations' loss passes)
    # The choice itself (eager for short batches on CPU only; a GPU keeps SDPA) applied every time.
    assert all(impl == attention.attention_for(device, width) for device, width, impl in chosen)
    if all(str(device).startswith("cpu") for device, _, _ in chosen):
        assert all(impl == "eager" for _, width, impl in chosen if width <= attention.EAGER_ATTENTION_MAX_TOKENS)


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_t5_dir"])
def test_a_loss_that_is_not_finite_stops_the_run_before_an_adapter_is_saved(tmp_path, model_fixture, request):
    """The Trainer alone would log a loss of 0 and a grad norm of nan, and save a NaN adapter."""
    from loratune.errors import TrainingError
    from loratune.training.run import train_run

    model_dir = request.getfixturevalue(model_fixture)
    cfg = make_cfg(tmp_path, model_dir, name="diverges", lr=1e30, max_steps=20, eval_steps=100, precision="fp32")
    with pytest.raises(TrainingError, match=r"training step (\d+): the loss is (nan|inf).*Lower train.lr \(now 1e\+30\)"):
        train_run(cfg, log=lambda _: None)
    run_dir = tmp_path / "runs" / "diverges"
    assert not (run_dir / "adapter").exists()
    # Nothing left blocks the retry: the same run with a sane learning rate trains and saves.
    fixed = make_cfg(tmp_path, model_dir, name="diverges", lr=1e-2, max_steps=2, eval_steps=100, precision="fp32")
    result = train_run(fixed, log=lambda _: None)  # no --overwrite: the stopped run left no adapter or checkpoint
    assert (result.run_dir / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("model_fixture,trainer_name", [
    ("tiny_llama_dir", "CompletionLossTrainer"), ("tiny_llama_dir", "LoratuneTrainer"),
    ("tiny_t5_dir", "LoratuneSeq2SeqTrainer")])
def test_the_eval_loss_is_the_mean_over_answer_tokens_whatever_the_eval_batch(tmp_path, model_fixture, trainer_name,
                                                                             request):
    """transformers averages batch means (weighted by the batch size), so its eval loss moved with the
    eval batch; loratune's is the mean over every answer token of the eval set, at any batch size."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainingArguments, Trainer

    import loratune.training.trainer as trainer_module
    from loratune.config import DataSettings
    from loratune.data import tokenize_rows
    from loratune.models.load import load_model
    from loratune.tasks import get_task

    loaded = load_model(str(request.getfixturevalue(model_fixture)), device="cpu")
    model_type = "seq2seq" if model_fixture == "tiny_t5_dir" else "causal"
    rows = [{"prompt": f"question {i}", "completion": "x" * length}
            for i, length in enumerate((1, 30, 2, 17, 3))]  # answers of very different lengths
    features, _ = tokenize_rows(rows, get_task("prompt-completion"), loaded.tokenizer, model_type, DataSettings())
    collate = DataCollatorForSeq2Seq(loaded.tokenizer, label_pad_token_id=-100, padding=True)
    # Expected: every answer token's loss, row by row, summed and divided by the answer tokens.
    total = tokens = 0.0
    with torch.no_grad():
        for feature in features:
            batch = collate([feature])
            count = int((batch["labels"] if model_type == "seq2seq" else batch["labels"][:, 1:]).ne(-100).sum())
            total += float(loaded.model(**batch).loss) * count
            tokens += count
    expected = total / tokens

    def eval_loss(cls, batch_size):
        args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                                        per_device_eval_batch_size=batch_size)
        trainer = cls(model=loaded.model, args=args, eval_dataset=Dataset.from_list(features), data_collator=collate)
        return trainer.evaluate()["eval_loss"]

    cls = getattr(trainer_module, trainer_name)
    for batch_size in (1, 2, 5):
        assert eval_loss(cls, batch_size) == pytest.approx(expected, rel=1e-5)
    # The fixture is one where transformers' own average is off: the test would catch its return.
    assert eval_loss(Trainer, 2) != pytest.approx(expected, rel=1e-3)
