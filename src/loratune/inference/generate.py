"""Batched generation for evaluation (chat and serving drive the same decode engine through serve/).

Prompts are sorted by length so each batch pads little, generated greedily unless the settings
say otherwise, and cut to the answer alone: the prompt is stripped, generation stops at EOS,
and SQL answers are reduced to their first statement so metrics judge the query, not the chatter.

Greedy generation with a causal model runs through the decode engine the server and chat share
(`inference/engine.py`), with continuous batching: a row that finishes leaves the batch and the
next prompts join it, so one long answer no longer holds 31 finished rows until it ends
(bench/eval_speed.py measures it).
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from loratune.config import GenerationSettings
from loratune.inference.answers import clean_output
from loratune.inference.encoding import encode_batch, generation_kwargs, prompt_ids
from loratune.inference.engine import DecodeEngine
from loratune.inference.jobs import Job
from loratune.models.precision import generation_precision


@torch.inference_mode()
def generate_texts(
    model: Any,
    tokenizer: Any,
    model_type: str,
    prompts: list[str],
    settings: GenerationSettings,
    *,
    batch_size: int = 16,
    task_family: str = "text",
    progress: str | None = None,
    on_answer: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Generate one answer per rendered prompt, in the prompts' order; `on_answer(i, text)` is
    called as each answer is ready (so a caller can save it before the others finish)."""
    model.eval()
    with generation_precision(model):
        if continuous_batching(model_type, settings):
            return _generate_continuous(model, tokenizer, prompts, settings, batch_size, task_family, on_answer)
        return _generate_static(model, tokenizer, model_type, prompts, settings, batch_size, task_family,
                                progress, on_answer)


def continuous_batching(model_type: str, settings: GenerationSettings) -> bool:
    """Whether `generate_texts` decodes with continuous batching: causal models, greedy, no
    beams and no repetition penalty (what the decode loop implements); else `model.generate`."""
    return (model_type == "causal" and not settings.do_sample and settings.num_beams == 1
            and settings.repetition_penalty == 1.0)


def _generate_static(model: Any, tokenizer: Any, model_type: str, prompts: list[str], settings: GenerationSettings,
                     batch_size: int, task_family: str, progress: str | None,
                     on_answer: Callable[[int, str], None] | None) -> list[str]:
    """Fixed batches through `model.generate`, longest prompts first."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    kwargs = generation_kwargs(settings, tokenizer)
    if task_family == "sql":
        # Only the first statement is judged, so stop there: chat models otherwise keep explaining
        # their query for the rest of max_new_tokens, which is most of the evaluation time.
        kwargs.update(stop_strings=[";"], tokenizer=tokenizer)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=progress, disable=progress is None, unit="batch"):
        inputs = encode_batch(tokenizer, model_type, [prompts[i] for i in batch], device)
        generated = model.generate(**inputs, **kwargs)
        if model_type == "causal":
            generated = generated[:, inputs["input_ids"].shape[1]:]
        for index, row in zip(batch, generated):
            outputs[index] = clean_output(tokenizer.decode(row, skip_special_tokens=True), task_family)
            if on_answer is not None:
                on_answer(index, outputs[index])
    return outputs


class SingleModelRuntime:
    """The decode loop's runtime (`inference.engine.Runtime`) for one model and no adapters to choose."""

    model_type = "causal"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.lock = threading.RLock()

    def mixed_batching(self) -> bool:
        return True

    def serves(self, name: str) -> bool:
        return True

    @contextlib.contextmanager
    def forward_for(self, names: list[str]) -> Iterator[tuple[Any, dict[str, Any]]]:
        yield self.model, {}  # inference mode and precision are the caller's (`generate_texts`)


def _generate_continuous(model: Any, tokenizer: Any, prompts: list[str], settings: GenerationSettings,
                         batch_size: int, task_family: str, on_answer: Callable[[int, str], None] | None) -> list[str]:
    """Greedy decoding with up to `batch_size` rows running; finished rows leave between steps.

    New prompts join in groups of at least a quarter of the batch (longest first, so a group
    pads little): each join is one prefill pass and one copy of the running KV cache, which
    admitting rows one at a time would pay for every row. SQL stops at the first `;`, as the
    static path does.
    """

    engine = DecodeEngine(SingleModelRuntime(model, tokenizer))
    pending = collections.deque(sorted(range(len(prompts)), key=lambda i: -len(prompts[i])))
    stop = [";"] if task_family == "sql" else []
    running: dict[int, Job] = {}
    outputs: list[str] = [""] * len(prompts)
    group = max(1, batch_size // 4)
    while pending or running:
        free = batch_size - engine.running
        if pending and (free >= min(group, len(pending)) or not engine.running):
            joining = {pending.popleft(): None for _ in range(min(free, len(pending)))}
            for index in joining:
                running[index] = Job("model", prompt_ids(tokenizer, "causal", prompts[index]),
                                     max_tokens=settings.max_new_tokens, stop=stop)
            engine.admit([running[index] for index in joining])
        else:
            engine.step()
        for index in [i for i, job in running.items() if job.finished]:
            job = running.pop(index)
            if job.error is not None:  # the decode loop turns exceptions into failed jobs (a server's way)
                raise RuntimeError(job.error)
            outputs[index] = clean_output(job.text, task_family)
            if on_answer is not None:
                on_answer(index, outputs[index])
    return outputs
