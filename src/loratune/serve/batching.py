"""Batched generation for the server: requests for several adapters in one forward pass.

A `Job` is one request's generation: prompt ids, limits, and a sink that receives the answer
piece by piece. `run_batch` generates a list of jobs together. peft mixes adapters inside one
batch when `model.generate` gets `adapter_names=[...]` (one name per row, `__base__` for no
adapter), so requests for different adapters share every forward pass.

Progress is tracked in a stopping criterion rather than a streamer: transformers calls the
stopping criteria with the whole batch after every new token and *before* the streamer, so one
object sees each row's token, decodes it, sends the new text, and tells `generate` which rows are
finished (EOS, their own `max_tokens`, a stop string, or a client that went away).

`Batcher` owns the queue: a worker thread takes the oldest waiting job plus every waiting job
it can share a batch with, so generation never runs on the server's event loop.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from loratune.config import GenerationSettings
from loratune.generate import autocast_context, generation_kwargs

BASE_ADAPTER = "__base__"
"""peft's row name for "no adapter" in a mixed-adapter batch."""


@dataclass(frozen=True)
class Sampling:
    """Temperature 0 means greedy, as in OpenAI's API; rows share a batch only with equal sampling."""

    temperature: float = 0.0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def key(self) -> tuple:
        return ("greedy",) if self.greedy else ("sample", self.temperature, self.top_p)


@dataclass
class JobEvent:
    """What a job's sink receives: text pieces, then exactly one `done` or `error`."""

    kind: str  # "delta" | "done" | "error"
    text: str = ""
    finish_reason: str | None = None
    status: int = 500


class Job:
    """One request's generation, consumed through `sink` (called from the generating thread).

    Pieces are sent as soon as they are certain: half UTF-8 characters, a possible start of a stop
    string and trailing whitespace wait for the next token. With `strip`, leading and final
    whitespace are dropped, so the pieces join to exactly the stripped answer evaluation scores.
    """

    def __init__(
        self,
        adapter: str,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        sampling: Sampling = Sampling(),
        stop: Iterable[str] = (),
        strip: bool = False,
        sink: Callable[[JobEvent], None] = lambda event: None,
    ) -> None:
        self.adapter = adapter
        self.prompt_ids = list(prompt_ids)
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.stop = tuple(s for s in stop if s)
        self.strip = strip
        self.sink = sink
        self.tokens: list[int] = []
        self.completion_tokens = 0
        self.text = ""
        """The answer sent so far; the whole answer once the job is finished."""
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.created = time.perf_counter()
        self._cancelled = threading.Event()

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating for this job (the client went away); its batch-mates carry on."""
        self._cancelled.set()

    def fail(self, message: str, status: int = 500) -> None:
        if not self.finished:
            self.error = message
            self.sink(JobEvent("error", text=message, status=status))

    def push_token(self, token: int, tokenizer: Any, eos_ids: set[int]) -> None:
        """Take the next generated token: send new text, and finish on EOS, stop string or limit."""
        if self.finished:
            return
        if self.cancelled:
            self._finish("cancelled")
            return
        self.completion_tokens += 1
        if token in eos_ids:
            self._emit(tokenizer.decode(self.tokens, skip_special_tokens=True), final=True)
            self._finish("stop")
            return
        self.tokens.append(token)
        text = tokenizer.decode(self.tokens, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self._emit(text[: min(hits)], final=True)
            self._finish("stop")
        elif len(self.tokens) >= self.max_tokens:
            self._emit(text, final=True)
            self._finish("length")
        else:
            self._emit(text, final=False)

    def close(self) -> None:
        """Called when generation ended without this job finishing (cancelled while queued)."""
        if not self.finished:
            self._finish("cancelled" if self.cancelled else "length")

    def _emit(self, text: str, *, final: bool) -> None:
        if self.strip:
            text = text.lstrip()
        if not final:
            # An incomplete UTF-8 character decodes to U+FFFD until its last byte arrives, and
            # the start of a stop string must not be sent before we know it is one.
            text = text.rstrip("\ufffd")
            for stop in self.stop:
                for k in range(min(len(stop) - 1, len(text)), 0, -1):
                    if text.endswith(stop[:k]):
                        text = text[:-k]
                        break
            # Trailing spaces wait for the next token: tokenizers that clean up spaces
            # (" ." -> ".") may still take them back, and a stripped answer must not end in one.
            text = text.rstrip()
        elif self.strip:
            text = text.rstrip()
        if text.startswith(self.text) and len(text) > len(self.text):
            piece = text[len(self.text):]
            self.text = text
            self.sink(JobEvent("delta", text=piece))

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        self.sink(JobEvent("done", finish_reason=reason))


class _JobTracker:
    """A stopping criterion that feeds each row's newest token to its job (see module doc)."""

    def __init__(self, jobs: list[Job], tokenizer: Any, eos_ids: set[int]) -> None:
        self.jobs = jobs
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        newest = input_ids[:, -1].tolist()
        for job, token in zip(self.jobs, newest, strict=True):
            job.push_token(token, self.tokenizer, self.eos_ids)
        return torch.tensor([job.finished for job in self.jobs], dtype=torch.bool, device=input_ids.device)


def pad_batch(prompts: list[list[int]], kind: str, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Causal prompts are padded on the left (generation continues from the last position),
    seq2seq encoder inputs on the right, exactly as offline generation pads them."""
    width = max(len(ids) for ids in prompts)
    rows, masks = [], []
    for ids in prompts:
        pad = [pad_id] * (width - len(ids))
        ones, zeros = [1] * len(ids), [0] * (width - len(ids))
        rows.append(pad + ids if kind == "causal" else ids + pad)
        masks.append(zeros + ones if kind == "causal" else ones + zeros)
    return {
        "input_ids": torch.tensor(rows, dtype=torch.long, device=device),
        "attention_mask": torch.tensor(masks, dtype=torch.long, device=device),
    }


def run_batch(model: Any, tokenizer: Any, kind: str, jobs: list[Job], *, adapter_names: bool) -> None:
    """Generate every job in one `model.generate` call; jobs must share their sampling settings.

    With `adapter_names`, each row runs through its own adapter (peft mixed batch). Without it,
    the caller has already activated the one adapter all jobs share (or disabled adapters).
    Errors are reported to the jobs that did not finish, never raised.
    """
    from transformers import StoppingCriteriaList

    jobs = [job for job in jobs if not job.finished]
    if not jobs:
        return
    sampling = jobs[0].sampling
    settings = GenerationSettings(
        max_new_tokens=max(job.max_tokens for job in jobs),
        do_sample=not sampling.greedy,
        temperature=sampling.temperature if not sampling.greedy else 1.0,
        top_p=sampling.top_p if sampling.top_p < 1.0 else None,
    )
    kwargs = generation_kwargs(settings, tokenizer)
    eos = kwargs["eos_token_id"]
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    if adapter_names:
        kwargs["adapter_names"] = [job.adapter for job in jobs]
    device = next(model.parameters()).device
    inputs = pad_batch([job.prompt_ids for job in jobs], kind, tokenizer.pad_token_id, device)
    tracker = _JobTracker(jobs, tokenizer, eos_ids)
    try:
        with torch.inference_mode(), autocast_context(model):
            model.generate(**inputs, **kwargs, stopping_criteria=StoppingCriteriaList([tracker]))
    except Exception as exc:  # one bad batch must not take the server down
        for job in jobs:
            job.fail(f"generation failed: {type(exc).__name__}: {exc}")
        return
    for job in jobs:
        job.close()


class QueueFull(Exception):
    """Raised by `Batcher.submit` when the bounded queue is full (the server answers 429)."""


class JobRunner(Protocol):
    """What the batcher needs from the model registry."""

    def mixed_batching(self) -> bool: ...

    def run_jobs(self, jobs: list[Job]) -> None: ...


class Batcher:
    """A bounded FIFO queue and one worker thread that generates jobs in batches.

    Fairness: each batch starts from the oldest waiting job, so an adapter with a long queue
    cannot starve another. When peft cannot mix adapters in one batch (e.g. DoRA), a batch holds
    one adapter's jobs only, and the next batch again starts from the oldest job.
    """

    def __init__(
        self, runner: JobRunner, *, max_batch_size: int = 8, queue_size: int = 64, batch_wait_s: float = 0.01
    ) -> None:
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.queue_size = queue_size
        self.batch_wait_s = batch_wait_s
        self.running = 0
        self.batches = 0
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="loratune-batcher", daemon=True)
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

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._pending) >= self.queue_size:
                raise QueueFull(f"{len(self._pending)} requests are already waiting")
            self._pending.append(job)
            self._cond.notify()

    def _take_batch(self) -> list[Job]:
        with self._cond:
            while self._pending and self._pending[0].cancelled:
                self._pending.popleft().close()
            if not self._pending:
                return []
            first = self._pending[0]
            mixed = self.runner.mixed_batching()
            key = first.sampling.key()
            batch = [
                job for job in self._pending
                if job.sampling.key() == key and (mixed or job.adapter == first.adapter) and not job.cancelled
            ][: self.max_batch_size]
            for job in batch:
                self._pending.remove(job)
            self.running = len(batch)
            self.batches += 1
            return batch

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
            # A short wait lets requests that arrive together share the batch.
            deadline = time.monotonic() + self.batch_wait_s
            while self.queued < self.max_batch_size and time.monotonic() < deadline:
                time.sleep(0.001)
            batch = self._take_batch()
            if not batch:
                continue
            try:
                self.runner.run_jobs(batch)
            except Exception as exc:  # keep the worker alive whatever happens
                for job in batch:
                    job.fail(f"generation failed: {type(exc).__name__}: {exc}")
            finally:
                self.running = 0
