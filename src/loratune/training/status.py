"""What a training tells the processes watching it, through the run's status.json (`run_status.py`):
its progress as it goes, and the stop it obeys when one is asked for (`loratune stop`, the ui)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from loratune.errors import TrainingStopped
from loratune.run_status import clear_stop, resume_command, stop_requested, write_status


class StopOnRequest(TrainerCallback):
    """Stop at the end of the step during which a stop was asked for, saving a checkpoint there so
    `--resume` continues from that very step.

    The main process reads the request; under torchrun / accelerate launch its answer goes to every
    process (`accelerator.check_trigger`, one small all-reduce per step), so all stop at the same
    step instead of some waiting for the others forever."""

    def __init__(self, run_dir: Path, accelerator: Any = None) -> None:
        self.run_dir = run_dir
        self.accelerator = accelerator if accelerator is not None and accelerator.num_processes > 1 else None
        self.stopped_at: int | None = None
        self.max_steps: int | None = None

    def _asked(self, state: Any) -> bool:
        asked = state.is_world_process_zero and stop_requested(self.run_dir)
        if self.accelerator is not None:
            if asked:
                self.accelerator.set_trigger()
            asked = self.accelerator.check_trigger()
        return asked

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._asked(state):
            return
        if state.is_world_process_zero:
            clear_stop(self.run_dir)  # answered; a resume must not stop again at once
        if state.global_step < state.max_steps:  # on the last step the run ends whole anyway
            self.stopped_at, self.max_steps = state.global_step, state.max_steps
            control.should_save = True
            control.should_training_stop = True

    def stopped(self) -> TrainingStopped:
        """The error that ends a stopped run, saying where it stopped and how to continue it."""
        return TrainingStopped(
            f"stopped at step {self.stopped_at} of {self.max_steps}; checkpoint-{self.stopped_at} saved; "
            f"continue with {resume_command(self.run_dir)}")


class ProgressToStatus(TrainerCallback):
    """Write the step, the step count (`state.max_steps`: the time budget refits it), the seconds
    since training began, the time left and the tokens per second into status.json, at most every
    `every_s` seconds between logs and at each log. The pace is measured from the end of the first
    step of this session: that step pays the one-time costs (allocations, compiling)."""

    def __init__(self, run_dir: Path, every_s: float = 2.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.run_dir, self.every_s, self.clock = run_dir, every_s, clock
        self.started: float | None = None
        self.first: tuple[float, int, int] | None = None  # (time, step, tokens) at the first step's end
        self.written = float("-inf")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started, self.first = self.clock(), None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = self.clock()
        if self.first is None:
            self.first = (now, state.global_step, int(state.num_input_tokens_seen or 0))
        if now - self.written >= self.every_s:
            self.write(state)

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.write(state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.write(state)

    def progress(self, state: Any, now: float) -> dict[str, Any]:
        """The progress fields of status.json at `now`."""
        fields: dict[str, Any] = {"step": state.global_step, "max_steps": state.max_steps,
                                  "elapsed_s": round(now - self.started, 1), "eta_s": None, "tokens_per_s": None}
        if self.first is not None and now > self.first[0] and state.global_step > self.first[1]:
            seconds = now - self.first[0]
            pace = seconds / (state.global_step - self.first[1])
            fields["eta_s"] = round(max(0, state.max_steps - state.global_step) * pace, 1)
            tokens = int(state.num_input_tokens_seen or 0) - self.first[2]
            fields["tokens_per_s"] = round(tokens / seconds, 1) if tokens > 0 else None
        return fields

    def write(self, state: Any) -> None:
        if self.started is None or not state.is_world_process_zero:  # an evaluation before training
            return
        now = self.clock()
        write_status(self.run_dir, "training", **self.progress(state, now))
        self.written = now
