"""`train.batch_size: auto` on CUDA: the search over measured probes, the probe step, the fit's wiring.

The memory readings are CUDA's; here they come from memory models (straight, bending like the
chunked loss, failing early like a fragmented allocator), and the probe step runs for real on the
tiny models on CPU. bench/cuda_check.py runs the whole thing on a GPU."""

import random

import pytest
import torch
from run_helpers import make_cfg

import loratune.training.batch_fit as batch_fit
from loratune.errors import TrainingError
from loratune.training.batch_fit import largest_fitting, longest_feature, probe_step


def true_largest(peak, budget, limit):
    return max([b for b in range(1, limit + 1) if peak(b) is not None and peak(b) <= budget], default=0)


def test_a_straight_line_is_found_in_three_probes():
    peak = lambda rows: 1000.0 + 100.0 * rows  # noqa: E731
    size, probes = largest_fitting(peak, budget=5000.0, limit=64)
    assert size == 40 == true_largest(peak, 5000.0, 64)
    assert [rows for rows, _ in probes] == [1, 2, 40]
    assert largest_fitting(peak, budget=5050.0, limit=64)[0] == 40  # the line rounds down


def test_memory_that_bends_is_followed_upwards():
    """The chunked loss caps the logits: memory per row falls after 8 rows, so the line through
    1 and 2 rows errs low, and the next probes climb."""
    peak = lambda rows: 1000.0 + 50.0 * rows + 300.0 * min(rows, 8)  # noqa: E731
    size, probes = largest_fitting(peak, budget=6000.0, limit=64)
    best = true_largest(peak, 6000.0, 64)
    assert best == 52
    assert peak(size) <= 6000.0 and size >= 0.9 * best
    assert len(probes) <= 8


def test_out_of_memory_before_the_budget_bisects_back():
    """An allocator that fails at 30 rows although the budget says 40: the line overshoots, the
    next probe halves the gap, and the answer is a size that ran."""
    peak = lambda rows: None if rows >= 30 else 1000.0 + 100.0 * rows  # noqa: E731
    size, probes = largest_fitting(peak, budget=5000.0, limit=64)
    assert peak(size) is not None and 27 <= size < 30
    assert [rows for rows, _ in probes] == [1, 2, 40, 21, 30, 25, 27]


def test_the_limit_and_the_rows_that_do_not_fit():
    size, probes = largest_fitting(lambda rows: 10.0 * rows, budget=1e9, limit=64)
    assert size == 64 and len(probes) == 3  # 1, 2, then the limit
    assert largest_fitting(lambda rows: None, budget=1e9, limit=64) == (0, [(1, None)])
    assert largest_fitting(lambda rows: 2e9, budget=1e9, limit=64) == (1, [(1, 2e9)])


def test_every_answer_fits_on_random_memory_models():
    rng = random.Random(0)
    for _ in range(300):
        fixed, per_row, early = rng.uniform(1e8, 4e9), rng.uniform(1e6, 4e8), rng.uniform(0, 3e8)
        knee, fail_at = rng.randint(1, 40), rng.choice([None, rng.randint(2, 80)])
        budget, limit = rng.uniform(2e9, 8e10), rng.choice([8, 64, 128])

        def peak(rows):
            if fail_at is not None and rows >= fail_at:
                return None
            return fixed + per_row * rows + early * min(rows, knee)

        size, probes = largest_fitting(peak, budget, limit)
        best = true_largest(peak, budget, limit)
        assert len(probes) <= 8
        if best == 0:
            assert size in (0, 1)
            continue
        assert 1 <= size <= best
        assert peak(size) is not None and peak(size) <= budget
        if fail_at is None and (early == 0 or knee == 1):  # a straight line from 1 row on
            assert size == best


def test_the_longest_feature_counts_the_decoder_only_for_t5():
    rows = [{"input_ids": [1] * 10, "labels": [1] * 2}, {"input_ids": [1] * 6, "labels": [1] * 9}]
    assert longest_feature(rows, encoder_decoder=True) is rows[1]
    assert longest_feature(rows, encoder_decoder=False) is rows[0]


def _trainer(tmp_path, model_dir, **train):
    """The Trainer as `loratune train` builds it (check, load, arguments, collator, callbacks)."""
    from loratune.training.check import check_run
    from loratune.training.run import build_trainer, load_lora_model
    from loratune.training.trainer import training_arguments

    cfg = make_cfg(tmp_path, model_dir, **train)
    cfg.lora.dropout = 0.3  # dropout draws random numbers: the probe must give them back
    plan = check_run(cfg)
    model, _ = load_lora_model(plan, lambda *_: None)
    args = training_arguments(cfg, tmp_path / "run", plan.precision, plan.device, plan.model.model_type)
    return plan, build_trainer(plan, model, args, tmp_path / "run")


@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_t5_dir"])
def test_a_probe_step_runs_backward_and_leaves_no_trace(tmp_path, which, request):
    plan, trainer = _trainer(tmp_path, request.getfixturevalue(which))
    model = trainer.model
    model.eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    seen = []
    real_zero_grad = model.zero_grad

    def zero_grad(*args, **kwargs):
        seen.append([n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0])
        return real_zero_grad(*args, **kwargs)

    model.zero_grad = zero_grad
    probe_step(trainer, longest_feature(plan.train_features, which == "tiny_t5_dir"), rows=3)
    assert seen and seen[0] and all("lora_" in n for n in seen[0])  # the adapters got gradients
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_fit_sets_the_trainers_batch_and_says_what_it_probed(tmp_path, tiny_llama_dir, monkeypatch):
    _, trainer = _trainer(tmp_path, tiny_llama_dir, batch_size=48)
    probed = []
    real_probe = batch_fit.probe_step
    monkeypatch.setattr(batch_fit, "probe_step", lambda t, f, rows: (probed.append(rows), real_probe(t, f, rows)))
    monkeypatch.setattr(batch_fit, "usable_cuda_bytes", lambda device: 5000.0 / batch_fit.HEADROOM)
    # CUDA's reading, from a memory model: 1000 bytes fixed, 100 per row, the optimizer's on top.
    monkeypatch.setattr(batch_fit, "_cuda_peak", lambda step, extra: (step(), 1000.0 + 100.0 * probed[-1])[1])
    lines = []
    record = batch_fit.fit_batch_size(trainer, trainer.train_dataset.to_list(), lines.append)
    assert probed == [1, 2, 40]
    assert record["rows"] == 40 and [p[0] for p in record["probes"]] == probed
    assert trainer.args.per_device_train_batch_size == trainer.args.per_device_eval_batch_size == 40
    assert trainer._train_batch_size == 40  # where Trainer.train() starts its own search
    assert "auto -> 40 rows per step" in lines[0] and "probed 1, 2, 40 rows" in lines[0]


def test_fit_names_the_setting_when_one_row_does_not_fit(tmp_path, tiny_llama_dir, monkeypatch):
    _, trainer = _trainer(tmp_path, tiny_llama_dir, batch_size=48)
    monkeypatch.setattr(batch_fit, "usable_cuda_bytes", lambda device: 1e9)
    monkeypatch.setattr(batch_fit, "_cuda_peak", lambda step, extra: None)
    with pytest.raises(TrainingError, match=r"train.batch_size: auto: one row of \d+ tokens .* runs out of GPU memory"):
        batch_fit.fit_batch_size(trainer, trainer.train_dataset.to_list(), lambda *_: None)
    assert trainer.args.per_device_train_batch_size == 48  # nothing changed


def test_the_probes_see_gradient_checkpointing(tmp_path, tiny_llama_dir, monkeypatch):
    """The Trainer turns checkpointing on inside train(); probes made before it would measure the
    memory of a run without it, and fit too small a batch."""
    _, trainer = _trainer(tmp_path, tiny_llama_dir, batch_size=48, gradient_checkpointing=True)
    model, state = trainer.model, []
    # transformers 5 renamed the property (the old name warns); either
    checkpointing = lambda: getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing  # noqa: E731
    monkeypatch.setattr(batch_fit, "usable_cuda_bytes", lambda device: 1e9)
    monkeypatch.setattr(batch_fit, "_cuda_peak", lambda step, extra: (state.append(checkpointing()), step(), 1.0)[2])
    assert not checkpointing()
    assert batch_fit.fit_batch_size(trainer, trainer.train_dataset.to_list(), lambda *_: None)["rows"] == 48
    assert state and all(state)
