"""The request queue and the worker thread that runs the decode loop.

Requests become `Job`s in a bounded FIFO queue (`QueueFull`, answered 429, when it is full).
One worker thread owns the running `DecodeEngine`: between two decode steps it moves waiting
jobs into the batch (up to `max_batch_size` rows), then generates one token for every row, so
generation never runs on the server's event loop and a new request starts within one step.

The queue is hand-written rather than an `asyncio.Queue` or a thread pool because admission
depends on the running batch: without mixed-adapter batching (e.g. DoRA) a job may only join
rows of its own adapter, and fairness needs the oldest waiting job to go first.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Protocol

from loratune.errors import QueueFull
from loratune.inference.jobs import Job
from loratune.serve.cpu_threads import release_openmp_threads


class Engine(Protocol):
    """What the worker needs from the decode loop (`inference.engine.DecodeEngine`)."""

    prefills: int

    @property
    def running(self) -> int: ...

    def can_join(self, job: Job, joining: list[Job]) -> bool: ...

    def admit(self, jobs: list[Job]) -> None: ...

    def step(self) -> None: ...

    def fail_all(self, message: str, status: int = 500) -> None: ...


class Scheduler:
    """A bounded FIFO queue in front of one running decode batch.

    Fairness: jobs join in arrival order. When the oldest waiting job cannot join the running
    rows (another adapter, without mixed batching), nothing joins until the batch drains, so a
    busy adapter cannot starve another.
    """

    def __init__(
        self, engine: Engine, *, max_batch_size: int = 8, queue_size: int = 64, batch_wait_s: float = 0.01
    ) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.queue_size = queue_size
        self.batch_wait_s = batch_wait_s
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._admitting = 0

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        """Requests generating now, counting those being prefilled."""
        return self.engine.running + self._admitting

    @property
    def batches(self) -> int:
        """Groups of requests prefilled together so far."""
        return self.engine.prefills

    def start(self) -> None:
        if self._thread is None:
            # The decode loop runs on the worker thread; free the CPU threads the starting thread
            # holds so that the worker's are the only ones (serve/cpu_threads.py: 2x at batch 1).
            release_openmp_threads()
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="loratune-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for job in self._pending:
                job.fail("the server is shutting down", status=503)
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.engine.fail_all("the server is shutting down", status=503)

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._pending) >= self.queue_size:
                raise QueueFull(f"{len(self._pending)} requests are already waiting")
            self._pending.append(job)
            self._cond.notify()

    def _take_joining(self) -> list[Job]:
        """The waiting jobs that join the running batch now, oldest first (see class doc)."""
        with self._cond:
            for job in [job for job in self._pending if job.cancelled]:
                self._pending.remove(job)
                job.close()
            room = self.max_batch_size - self.engine.running
            joining: list[Job] = []
            if room <= 0 or not self._pending or not self.engine.can_join(self._pending[0], joining):
                return joining
            for job in list(self._pending):
                if len(joining) == room:
                    break
                if self.engine.can_join(job, joining):
                    joining.append(job)
                    self._pending.remove(job)
            return joining

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self.engine.running and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
            if not self.engine.running:
                # An idle server waits a moment so requests that arrive together share a prefill.
                deadline = time.monotonic() + self.batch_wait_s
                while self.queued < self.max_batch_size and time.monotonic() < deadline:
                    time.sleep(0.001)
            joining: list[Job] = []
            try:
                joining = self._take_joining()
                if joining:
                    self._admitting = len(joining)
                    try:
                        self.engine.admit(joining)
                    finally:
                        self._admitting = 0
                if self.engine.running:
                    self.engine.step()
            except Exception as exc:  # keep the worker alive whatever happens
                message = f"generation failed: {type(exc).__name__}: {exc}"
                for job in joining:
                    job.fail(message)
                self.engine.fail_all(message)
