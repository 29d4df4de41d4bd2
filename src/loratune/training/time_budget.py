"""`train.max_minutes`: a training run that ends within a wall-clock budget with its LR schedule whole.

A Trainer callback (`TimeBudget`) times the first steps, fixes the number of steps, and stretches
the running schedule to that length (`stretch_schedule`), so the cosine reaches its end instead of
being cut.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from typing import Any, Callable

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

Log = Callable[[str], None]


def stretch_schedule(scheduler: Any, total_steps: int, warmup_steps: int) -> bool:
    """Give a running LR schedule a new length, so it still ends where it should (cosine reaches
    its minimum at the new last step). transformers' schedules are LambdaLRs over a `partial`
    that carries `num_training_steps`; we rebuild that partial. False when the schedule has no
    length to change (e.g. constant)."""
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps it
    changed = False
    for index, fn in enumerate(getattr(scheduler, "lr_lambdas", [])):
        if isinstance(fn, functools.partial) and "num_training_steps" in fn.keywords:
            keywords = dict(fn.keywords, num_training_steps=total_steps)
            if "num_warmup_steps" in keywords:
                keywords["num_warmup_steps"] = warmup_steps
            scheduler.lr_lambdas[index] = functools.partial(fn.func, *fn.args, **keywords)
            changed = True
    return changed


class TimeBudget(TrainerCallback):
    """`train.max_minutes`: time the first steps, then fix the number of steps so the run (evaluations
    and checkpoints included) ends within the budget, and stretch the LR schedule to that length so
    it runs whole.

    The Trainer starts with an upper bound (the epochs or max_steps of the config). After
    `calibrate_steps` we set `state.max_steps` (the Trainer's own flow callback stops, evaluates and
    saves there) from the pace so far plus one evaluation per `eval_steps`. The first steps are not
    the typical ones (length grouping puts the longest batch first; kernels warm up), and
    evaluations, checkpoints and a machine that slows down are only seen as the run goes, so every
    twentieth of the way the pace since the first step (`pace`) is checked again, and
    the length refitted when the run would overshoot the budget or leave more than 3% of it unused
    (up to the upper bound). The schedule is stretched each time, so the cosine still ends whole.
    """

    def __init__(self, minutes: float, *, warmup_ratio: float, eval_s: float, log: Log, calibrate_steps: int = 6,
                 early_fit_after: int = 1, clock: Callable[[], float] = time.perf_counter) -> None:
        """`early_fit_after`: timed steps (after the first) a fit before `calibrate_steps` needs.
        Compiled runs pass 3: their second step can compile too (a cold demo: 46 s, 33 s, then
        ~2 s per step), and only the median of three durations sees past it."""
        self.budget_s = minutes * 60.0
        self.early_fit_after = early_fit_after
        self.warmup_ratio = warmup_ratio
        self.eval_s = eval_s
        self.log = log
        self.calibrate_steps = calibrate_steps
        self.clock = clock
        self.started = clock()
        self.began = False
        self.search_s = 0.0  # seconds before the batch size that fits (train.batch_size: auto on CUDA)
        self.last_step_end: float | None = None
        self.durations: list[float] = []
        self.fitted_steps: int | None = None
        self.upper_steps: int | None = None
        self.checked_at = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The budget starts at the first call. `train.batch_size: auto` on CUDA calls it again for
        each smaller batch it retries after an out-of-memory error: that search is part of the
        run's wall time (on an H200 capped at 2 GB it took 27 s of a 30 s budget, and the run
        overshot to 57 s when the clock restarted here), so only the pace is measured afresh."""
        if self.began:
            self.last_step_end, self.durations, self.fitted_steps, self.upper_steps = None, [], None, None
            self.checked_at, self.search_s = 0, self.clock() - self.started
        else:
            self.began, self.started = True, self.clock()

    def pace(self) -> float | None:
        """Seconds per step after the first: the mean step, leaving out steps over 8x the median.
        Those are one-time costs, not the pace: with `train.compile` a later step can compile
        again (another attention kernel for wider batches: ~40 s against ~1.5 s per step), and
        counting it in the mean made the first fit several times too short. Evaluations (a few
        steps' time) stay in."""
        if not self.durations:
            return None
        typical = statistics.median(self.durations)
        kept = [d for d in self.durations if d <= 8 * typical]
        return sum(kept) / len(kept)

    def follow_progress(self, callbacks: list[Any]) -> None:
        """Show the fitted step count in the Trainer's progress bar: it counts to the Trainer's upper
        bound (epochs x rows) otherwise, and its time left would read hours for a 15-minute budget."""
        self.progress = [c for c in callbacks if isinstance(c, ProgressCallback)]

    def _fit(self, state: Any, steps: int, scheduler: Any) -> bool:
        self.fitted_steps = state.max_steps = steps
        for callback in getattr(self, "progress", []):
            if callback.training_bar is not None:  # tqdm then estimates the time left from its rate
                callback.training_bar.total = steps
                callback.training_bar.refresh()
        warmup = math.ceil(self.warmup_ratio * steps) if self.warmup_ratio < 1 else int(self.warmup_ratio)
        return stretch_schedule(scheduler, steps, warmup)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = self.clock()
        step = state.global_step
        if self.last_step_end is not None:  # the first step pays one-time costs: time from its end
            self.durations.append(now - self.last_step_end)
        self.last_step_end = now
        elapsed = now - self.started
        left = self.budget_s - elapsed - self.eval_s  # keep one evaluation for the end
        pace = self.pace()
        # Fit after `calibrate_steps`, or sooner when steps are slow (5% of the budget spent), so a
        # slow model does not run a large part of its budget on the provisional schedule.
        calibrated = step >= min(self.calibrate_steps, state.max_steps) or (
            len(self.durations) >= self.early_fit_after and elapsed > 0.05 * self.budget_s)
        if self.fitted_steps is None and pace is not None and calibrated:
            self.upper_steps = state.max_steps
            eval_every = state.eval_steps if args.eval_strategy == "steps" and state.eval_steps else None
            per_step = pace + (self.eval_s / eval_every if eval_every else 0.0)
            fitted = max(step, min(state.max_steps, step + int(max(0.0, left) / per_step)))
            stretched = self._fit(state, fitted, kwargs.get("lr_scheduler"))
            self.checked_at = step
            self.log(
                f"train.max_minutes={self.budget_s / 60:g}: {pace:.2f}s per step -> {fitted} steps"
                + (f" ({self.search_s:.0f}s went to finding the batch size)" if self.search_s else "")
                + ("" if stretched else " (this LR schedule has no length to stretch)")
            )
        elif self.fitted_steps is not None and pace is not None and step < state.max_steps and (
                step - self.checked_at >= max(3, self.fitted_steps // 20)):
            self.checked_at = step
            projected = elapsed + (state.max_steps - step) * pace + self.eval_s
            if projected > self.budget_s or projected < 0.97 * self.budget_s:
                fitted = min(self.upper_steps or state.max_steps, max(step + 1, step + int(max(0.0, left) / pace)))
                if fitted != state.max_steps:
                    faster = fitted > state.max_steps
                    self._fit(state, fitted, kwargs.get("lr_scheduler"))
                    self.log(f"train.max_minutes: {'faster' if faster else 'slower'} than measured "
                             f"({pace:.2f}s per step) -> {fitted} steps")
        if step >= state.max_steps:
            # Epoch-based evaluation would never run when the budget ends mid-epoch: evaluate and
            # save here so the last steps count for the best checkpoint.
            control.should_evaluate = True
            control.should_save = True
            control.should_training_stop = True
        elif elapsed > self.budget_s * 1.25:  # far past the budget: stop, keep the work
            self.log("train.max_minutes: over budget; stopping early (the LR schedule is cut)")
            control.should_evaluate = control.should_save = control.should_training_stop = True
