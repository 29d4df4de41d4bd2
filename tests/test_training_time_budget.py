"""The time budget (`train.max_minutes`): the step count fitted to the pace, the schedule stretched whole."""

import math

import pytest
import torch

from loratune.training.time_budget import TimeBudget, stretch_schedule


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_stretched_schedule_ends_at_its_new_last_step(name):
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=10, num_training_steps=100)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    assert stretch_schedule(scheduler, total_steps=30, warmup_steps=3)
    rates = []
    for _ in range(6, 30):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[-1] == pytest.approx(0.0, abs=1e-9)  # reached the end at step 30, not 100
    # step 7 on the new schedule (warmup 3, 30 steps), by hand
    progress = (7 - 3) / (30 - 3)
    expected = 0.5 * (1 + math.cos(math.pi * progress)) if name == "cosine" else 1 - progress
    assert rates[0] == pytest.approx(expected)
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # decays monotonically


def test_constant_schedule_has_nothing_to_stretch():
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler("constant", optimizer)
    assert not stretch_schedule(scheduler, total_steps=30, warmup_steps=3)
    assert scheduler.get_last_lr() == [1.0]


def _budget_run(step_seconds, *, minutes=1.0, upper=1000, early_fit_after=1):
    """Drive a TimeBudget through a run whose n-th step takes step_seconds(n) on a fake clock;
    returns the step the run stopped at, the clock then, and the budget's messages."""
    from types import SimpleNamespace

    from transformers import get_scheduler

    clock = [0.0]
    messages = []
    budget = TimeBudget(minutes, warmup_ratio=0.0, eval_s=0.0, log=messages.append, clock=lambda: clock[0],
                        early_fit_after=early_fit_after)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=upper)
    state = SimpleNamespace(global_step=0, max_steps=upper, eval_steps=None)
    args, control = SimpleNamespace(eval_strategy="no"), SimpleNamespace(should_training_stop=False)
    budget.on_train_begin(args, state, control)
    while not control.should_training_stop:
        state.global_step += 1
        clock[0] += step_seconds(state.global_step)
        optimizer.step()
        scheduler.step()
        budget.on_step_end(args, state, control, lr_scheduler=scheduler)
    return state.global_step, clock[0], messages, scheduler.get_last_lr()[0]


def test_time_budget_lengthens_a_run_whose_first_steps_were_slow():
    # Six slow steps (the longest batch first, warm-up), then steps twice as fast: the first fit
    # undershoots, the re-checks lengthen the run, and it ends inside the budget, not at half of it.
    steps, seconds, messages, last_lr = _budget_run(lambda n: 4.0 if n <= 6 else 2.0)
    assert messages[0].endswith("-> 15 steps")
    assert any("faster than measured" in m for m in messages)
    assert 0.95 * 60 <= seconds <= 60 and steps == 23  # 15 steps (34 s) without the re-checks
    assert last_lr == pytest.approx(0.0, abs=1e-9)  # the cosine was stretched to the new end


def test_time_budget_shortens_a_run_that_slows_down():
    steps, seconds, messages, last_lr = _budget_run(lambda n: 1.0 if n <= 20 else 3.0, minutes=2.0)
    assert any("slower than measured" in m for m in messages)
    assert 0.95 * 120 <= seconds <= 120 and steps == 53  # the first fit said 120 steps (~300 s)
    assert last_lr == pytest.approx(0.0, abs=1e-9)


def test_time_budget_never_passes_the_configured_upper_bound():
    steps, seconds, _, _ = _budget_run(lambda n: 4.0 if n <= 6 else 0.5, upper=40)
    assert steps == 40 and seconds < 60


def test_time_budget_is_not_misled_by_a_step_that_compiles_again():
    # train.compile: the first step compiles (40 s), the third compiles again for wider batches
    # (35 s), then 1 s per step. The pace leaves that step out, so one refit (after the 35 s were
    # spent) fixes the length; with it in the mean (18 s per step at step 3) the run was cut to a
    # fraction of its length, then lengthened again refit after refit.
    steps, seconds, messages, last_lr = _budget_run(lambda n: {1: 40.0, 3: 35.0}.get(n, 1.0), minutes=3.0)
    assert messages[0] == "train.max_minutes=3: 1.00s per step -> 141 steps"  # fitted at step 2 (slow start)
    assert messages[1:] == ["train.max_minutes: slower than measured (1.00s per step) -> 107 steps"]
    assert 0.95 * 180 <= seconds <= 180 and steps == 107
    assert last_lr == pytest.approx(0.0, abs=1e-9)


def test_compiled_run_fits_its_budget_after_three_timed_steps():
    # A cold demo (6 minutes): the first step compiled for 46 s, the second for 33.5 s (SDPA for a
    # wider batch), then ~1.9 s per step. Fitted on the second step alone, the run was cut to 10
    # steps (LR schedule and all) until a refit; a compiled run waits for three timed steps.
    seconds = lambda n: {1: 46.0, 2: 33.5}.get(n, 1.9)  # noqa: E731
    steps, _, plain, _ = _budget_run(seconds, minutes=6.0)
    assert plain[0] == "train.max_minutes=6: 33.50s per step -> 10 steps"
    steps, elapsed, compiled, last_lr = _budget_run(seconds, minutes=6.0, early_fit_after=3)
    assert compiled == ["train.max_minutes=6: 1.90s per step -> 149 steps"]  # one fit, no refit
    assert 0.95 * 360 <= elapsed <= 360 and steps == 149
    assert last_lr == pytest.approx(0.0, abs=1e-9)


def test_the_budget_counts_the_batch_size_search_before_the_steps():
    """`train.batch_size: auto` restarts training after each out-of-memory error (on_train_begin
    again): the seconds spent there are gone from the budget, and the pace is measured afresh."""
    from types import SimpleNamespace

    clock, messages = [0.0], []
    budget = TimeBudget(1.0, warmup_ratio=0.0, eval_s=0.0, log=messages.append, clock=lambda: clock[0])
    args, control = SimpleNamespace(eval_strategy="no"), SimpleNamespace(should_training_stop=False)
    state = SimpleNamespace(global_step=0, max_steps=1000, eval_steps=None)
    budget.on_train_begin(args, state, control)
    for step in (1, 2):  # a bigger batch: 5 s per step, then out of memory
        clock[0] += 5.0
        state.global_step = step
        budget.on_step_end(args, state, control)
    clock[0] += 10.0  # the search's retries
    state = SimpleNamespace(global_step=0, max_steps=1000, eval_steps=None)
    budget.on_train_begin(args, state, control)
    while not control.should_training_stop:
        state.global_step += 1
        clock[0] += 1.0
        budget.on_step_end(args, state, control)
    assert 0.95 * 60 <= clock[0] <= 60  # the whole run, search included, within the minute
    assert state.global_step in range(38, 41)  # 60 s - 20 s spent = 40 steps of 1 s, not 60
    assert any("-> 40 steps (20s went to finding the batch size)" in m for m in messages)


def test_the_progress_bar_counts_to_the_fitted_steps():
    """The Trainer's bar starts at its upper bound (epochs x rows); once the budget fits the run it
    counts to the fitted steps, so its time left is the budget's, not hours."""
    from types import SimpleNamespace

    from transformers import get_scheduler
    from transformers.trainer_callback import ProgressCallback

    progress = ProgressCallback()
    state = SimpleNamespace(global_step=0, max_steps=2235, eval_steps=None, is_world_process_zero=True)
    args, control = SimpleNamespace(eval_strategy="no"), SimpleNamespace(should_training_stop=False)
    progress.on_train_begin(args, state, control)
    clock = [0.0]
    budget = TimeBudget(1.0, warmup_ratio=0.0, eval_s=0.0, log=lambda *_: None, clock=lambda: clock[0])
    budget.follow_progress([progress, budget])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=2235)
    budget.on_train_begin(args, state, control)
    while not control.should_training_stop:
        state.global_step += 1
        clock[0] += 1.0  # 1 s a step: a 1-minute budget fits ~60 steps
        progress.on_step_end(args, state, control)
        budget.on_step_end(args, state, control, lr_scheduler=scheduler)
    assert progress.training_bar.total == state.max_steps == budget.fitted_steps
    assert 50 <= budget.fitted_steps <= 60
