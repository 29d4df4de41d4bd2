"""Continuous batching: one running decode batch that requests join and leave between steps.

A request no longer waits for the batch in front of it to finish. Between two decode steps,
waiting requests are prefilled together and their KV caches are merged into the running
batch's (left-padded to a common length, as `generate` pads a batch); a row that finishes
(EOS, stop string, its `max_tokens`, a client that left) leaves at once, and columns of
padding that no remaining row needs are cut off. Each step feeds every row its newest token
and asks the model for one more: one forward pass serves all rows, whatever their adapter
(peft's `adapter_names` runs each row through its own LoRA weights).

Positions and padding follow `generate` exactly (position = number of real tokens before,
padding masked out), so in fp32 a row's answer is the one it gets alone; in bf16 the other rows
change matmul shapes, which moves logits by bf16 rounding (see `ModelRegistry` and docs/serving.md).

Encoder-decoder models (T5) keep static batching: their cross-attention caches are not merged,
so a group of requests is generated to the end with `generate` and the next group waits.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from typing import Any, Protocol

import torch

from loratune.config import GenerationSettings
from loratune.inference.encoding import encode_batch, generation_kwargs
from loratune.inference.jobs import Job, choose_tokens


class Runtime(Protocol):
    """What the decode loop needs from the model registry."""

    lock: threading.RLock
    tokenizer: Any
    model_type: str

    def mixed_batching(self) -> bool: ...

    def serves(self, name: str) -> bool: ...

    def forward_for(self, names: list[str]) -> contextlib.AbstractContextManager[tuple[Any, dict[str, Any]]]: ...


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _cache_kwarg(model: Any) -> str:
    """transformers 5.x renamed `past_key_values` to `cache` (the old name warns until 5.40)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_kwarg_of(type(base))


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _mergeable(cache: Any) -> bool:
    """Plain per-layer key/value tensors; sliding-window or recurrent layers are not merged."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


class DecodeEngine:
    """The rows now generating: their jobs, KV cache, attention mask, positions and next tokens.

    Every method takes the registry lock for the duration of one forward pass, so adapters can
    be loaded and unloaded between steps; a row whose adapter was unloaded fails with a 404.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.jobs: list[Job] = []
        self.prefills = 0
        """Prefill passes so far (a group of requests that arrived together is one)."""
        self.steps = 0
        self._cache: Any = None
        self._mask = torch.zeros(0, 0, dtype=torch.long)
        self._next = torch.zeros(0, dtype=torch.long)
        self._positions = torch.zeros(0, dtype=torch.long)
        self._joinable = True
        eos = generation_kwargs(GenerationSettings(), runtime.tokenizer)["eos_token_id"]
        self._eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}

    @property
    def running(self) -> int:
        return len(self.jobs)

    def can_join(self, job: Job, joining: list[Job]) -> bool:
        """Whether `job` can share forward passes with the running rows and the others `joining`."""
        rows = self.jobs + joining
        if not rows:
            return True
        if self.runtime.model_type != "causal":  # one `generate` call: one sampling setting
            return not self.jobs and job.sampling.key() == rows[0].sampling.key() and (
                self.runtime.mixed_batching() or job.adapter == rows[0].adapter)
        if self.jobs and not self._joinable:
            return False
        return self.runtime.mixed_batching() or job.adapter == rows[0].adapter

    def admit(self, jobs: list[Job]) -> None:
        """Prefill `jobs` and add them to the running rows (seq2seq: generate them to the end)."""
        for job in jobs:
            if job.cancelled:
                job.close()  # its client left while it waited
        with self.runtime.lock:
            jobs = self._servable([job for job in jobs if not job.finished])
            if not jobs:
                return
            self.prefills += 1
            if self.runtime.model_type != "causal":
                self._generate_static(jobs)
                return
            from transformers import DynamicCache

            inputs = encode_batch(self.runtime.tokenizer, "causal", [job.prompt_ids for job in jobs])
            mask = inputs["attention_mask"]
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
            cache = DynamicCache()
            try:
                with self.runtime.forward_for([job.adapter for job in jobs]) as (model, extra):
                    device = model.get_input_embeddings().weight.device
                    extra[_cache_kwarg(model)] = cache
                    logits = model(input_ids=inputs["input_ids"].to(device), attention_mask=mask.to(device),
                                   position_ids=positions.to(device), use_cache=True, logits_to_keep=1,
                                   **extra).logits[:, -1]
            except Exception as exc:  # one bad prefill fails its own requests, not the running ones
                for job in jobs:
                    job.fail(f"generation failed: {type(exc).__name__}: {exc}")
                return
            self._joinable = _mergeable(cache)
            tokens = choose_tokens(logits, [job.sampling for job in jobs])
            self._merge(jobs, cache, mask.to(device), positions[:, -1].to(device) + 1)
            self._push(jobs, tokens)
        self._drop_finished()

    def step(self) -> None:
        """Generate one token for every running row; finished rows leave the batch."""
        with self.runtime.lock:
            if len(self._servable(self.jobs)) < len(self.jobs):
                self._drop_finished()
            if not self.jobs:
                return
            ones = self._mask.new_ones(len(self.jobs), 1)
            mask = torch.cat([self._mask, ones], dim=1)
            try:
                with self.runtime.forward_for([job.adapter for job in self.jobs]) as (model, extra):
                    extra[_cache_kwarg(model)] = self._cache
                    logits = model(input_ids=self._next[:, None], attention_mask=mask,
                                   position_ids=self._positions[:, None], use_cache=True, **extra).logits[:, -1]
            except Exception as exc:  # the cache may be half-updated: every running row fails
                self.fail_all(f"generation failed: {type(exc).__name__}: {exc}")
                return
            self.steps += 1
            self._mask = mask
            self._positions = self._positions + 1
            self._push(self.jobs, choose_tokens(logits, [job.sampling for job in self.jobs]))
        self._drop_finished()

    def fail_all(self, message: str, status: int = 500) -> None:
        for job in self.jobs:
            job.fail(message, status=status)
        self._reset()

    # ------------------------------------------------------------ internals

    def _servable(self, jobs: list[Job]) -> list[Job]:
        """Fail the jobs whose adapter was unloaded; return the others."""
        kept = []
        for job in jobs:
            if self.runtime.serves(job.adapter):
                kept.append(job)
            else:
                job.fail(f"model {job.adapter!r} was unloaded before its request finished", status=404)
        return kept

    def _push(self, jobs: list[Job], tokens: list[int]) -> None:
        for job, token in zip(jobs, tokens, strict=True):
            job.push_token(token, self.runtime.tokenizer, self._eos_ids)
        start = len(self.jobs) - len(jobs)
        self._next[start:] = torch.tensor(tokens, dtype=torch.long, device=self._next.device)

    def _merge(self, jobs: list[Job], cache: Any, mask: torch.Tensor, positions: torch.Tensor) -> None:
        """Append prefilled rows: both caches are left-padded to the longer one, then stacked."""
        if not self.jobs:
            self.jobs, self._cache, self._mask, self._positions = list(jobs), cache, mask, positions
            self._next = positions.new_zeros(len(jobs))
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)])
            mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)])
        self._mask = torch.cat([_left_pad(self._mask, width, 1), _left_pad(mask, width, 1)])
        self._positions = torch.cat([self._positions, positions])
        self._next = torch.cat([self._next, positions.new_zeros(len(jobs))])
        self.jobs = self.jobs + list(jobs)

    def _drop_finished(self) -> None:
        keep = [i for i, job in enumerate(self.jobs) if not job.finished]
        if len(keep) == len(self.jobs):
            return
        if not keep:
            self._reset()
            return
        index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        # Columns that are padding in every remaining row cost attention work and memory: cut them.
        start = int(mask.any(dim=0).nonzero()[0])
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self._mask = mask[:, start:]
        self._positions = self._positions.index_select(0, index)
        self._next = self._next.index_select(0, index)
        self.jobs = [self.jobs[i] for i in keep]

    def _reset(self) -> None:
        self.jobs, self._cache = [], None
        self._mask = torch.zeros(0, 0, dtype=torch.long)
        self._next = torch.zeros(0, dtype=torch.long)
        self._positions = torch.zeros(0, dtype=torch.long)

    def _generate_static(self, jobs: list[Job]) -> None:
        """Seq2seq: the whole group through one `generate` call, jobs fed by a stopping criterion."""
        from transformers import StoppingCriteriaList

        sampling = jobs[0].sampling
        settings = GenerationSettings(
            max_new_tokens=max(job.max_tokens for job in jobs), do_sample=not sampling.greedy,
            temperature=sampling.temperature if not sampling.greedy else 1.0,
            top_p=sampling.top_p if sampling.top_p < 1.0 else None,
        )
        kwargs = generation_kwargs(settings, self.runtime.tokenizer)
        tracker = _JobTracker(jobs, self.runtime.tokenizer, self._eos_ids)
        try:
            with self.runtime.forward_for([job.adapter for job in jobs]) as (model, extra):
                device = model.get_input_embeddings().weight.device
                prompts = [job.prompt_ids for job in jobs]
                inputs = encode_batch(self.runtime.tokenizer, self.runtime.model_type, prompts, device)
                model.generate(**inputs, **kwargs, **extra, stopping_criteria=StoppingCriteriaList([tracker]))
        except Exception as exc:  # one bad batch must not take the server down
            for job in jobs:
                job.fail(f"generation failed: {type(exc).__name__}: {exc}")
            return
        for job in jobs:
            job.close()


class _JobTracker:
    """A stopping criterion that feeds each row's newest token to its job.

    transformers calls stopping criteria with the whole batch after every new token (before any
    streamer), so one object sees each row's token, sends the new text, and tells `generate`
    which rows are finished.
    """

    def __init__(self, jobs: list[Job], tokenizer: Any, eos_ids: set[int]) -> None:
        self.jobs = jobs
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        for job, token in zip(self.jobs, input_ids[:, -1].tolist(), strict=True):
            job.push_token(token, self.tokenizer, self.eos_ids)
        return torch.tensor([job.finished for job in self.jobs], dtype=torch.bool, device=input_ids.device)


def run_to_end(runtime: Runtime, jobs: list[Job]) -> None:
    """Generate `jobs` together until all finish (the terminal chat, tests, benchmarks)."""
    batch = DecodeEngine(runtime)
    batch.admit(jobs)
    while batch.running:
        batch.step()
