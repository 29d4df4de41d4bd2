"""Batched generation shared by evaluation, chat and serving.

Prompts are sorted by length so each batch pads little, generated greedily unless the settings
say otherwise, and cut to the answer alone: the prompt is stripped, generation stops at EOS,
and SQL answers are reduced to their first statement so metrics judge the query, not the chatter.

Greedy generation with a causal model runs through the server's continuous batching
(`serve/decode.py`): a row that finishes leaves the batch and the next prompts join it, so one
long answer no longer holds 31 finished rows until it ends (bench/eval_speed.py measures it).
"""

from __future__ import annotations

import collections
import contextlib
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from loratune.config import GenerationSettings
from loratune.data import encode_prompt

_FENCE = re.compile(r"```(?:sql|sqlite)?\s*\n?(.*?)(?:```|$)", re.IGNORECASE | re.DOTALL)
_SQL_START = re.compile(r"\b(SELECT|WITH)\b", re.IGNORECASE)


def extract_sql(text: str) -> str:
    """The first SQL statement in a model's answer.

    Chat models often wrap SQL in a ```sql fence or add an explanation; we take the fenced code
    when present, start at the first SELECT/WITH, and stop at the first `;` or blank line. This
    is generous to the base model on purpose, so the comparison measures SQL, not formatting.
    """
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    start = _SQL_START.search(text)
    if start:
        text = text[start.start():]
    text = text.split(";")[0]
    text = re.split(r"\n\s*\n", text)[0]
    return " ".join(text.split())


def generation_kwargs(settings: GenerationSettings, tokenizer: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": settings.do_sample,
        "num_beams": settings.num_beams,
        "repetition_penalty": settings.repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if settings.do_sample:
        kwargs["temperature"] = settings.temperature
        if settings.top_k is not None:
            kwargs["top_k"] = settings.top_k
        if settings.top_p is not None:
            kwargs["top_p"] = settings.top_p
    else:
        # Greedy: silence sampling defaults that some generation_config.json files carry.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def bf16_generation(model: Any) -> bool:
    """Whether generation with `model` computes its matmuls in bf16: fp32 weights on a device with
    native bf16 (`LORATUNE_PRECISION` forces the answer), the same choice training makes."""
    from loratune.precision import bf16_supported

    # The embedding's dtype is the residual stream's: fp32 there means an fp32 model, whatever
    # `cast_linear_weights` did to its Linear layers.
    embedding = model.get_input_embeddings().weight
    return embedding.dtype == torch.float32 and bf16_supported(embedding.device.type)


def autocast_context(model: Any) -> contextlib.AbstractContextManager:
    """bf16 autocast where the hardware has it: ~4x faster matmuls on a CPU with AMX or AVX-512 BF16.

    Norms, softmax and the residual stream stay in fp32 (autocast keeps them there); only the
    matmuls run in bf16. See `bf16_linear_weights` for why the weights are cast beforehand.
    """
    if bf16_generation(model):
        return torch.autocast(device_type=model.get_input_embeddings().weight.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cast_linear_weights(model: Any) -> list[tuple[torch.nn.Module, str, torch.nn.Parameter]]:
    """Store every fp32 `nn.Linear` weight and bias of `model` (LoRA's own layers included) in bf16.

    Under bf16 autocast each matmul casts its fp32 weight to bf16 on every call, so batch-1
    decoding re-reads and re-writes every weight at every token (the issue measured 14.5 tok/s
    against 26.5 with bf16 weights). Autocast leaves an already-bf16 weight alone, and its cast
    rounds exactly as `.to(bfloat16)` does, so answers are bit-for-bit those of plain autocast.
    Only Linear layers change: embeddings, norms and the residual stream keep fp32. A tied
    `lm_head` gets its own bf16 copy (the embedding keeps the fp32 original). Returns what was
    replaced, for `restore_weights`.
    """
    replaced = []
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        for name in ("weight", "bias"):
            tensor = getattr(module, name, None)
            if isinstance(tensor, torch.nn.Parameter) and tensor.dtype == torch.float32:
                replaced.append((module, name, tensor))
                setattr(module, name, torch.nn.Parameter(tensor.detach().to(torch.bfloat16), requires_grad=False))
    return replaced


def restore_weights(replaced: list[tuple[torch.nn.Module, str, torch.nn.Parameter]]) -> None:
    for module, name, original in replaced:
        setattr(module, name, original)


@contextlib.contextmanager
def generation_precision(model: Any) -> Iterator[None]:
    """Generate in the precision the hardware is fast at, leaving the caller's model as it was.

    Where bf16 is native: bf16 copies of the Linear weights for the duration (one cast per call,
    not per token; ~half the fp32 model's size in extra memory) under autocast. Elsewhere: fp32.
    """
    replaced = cast_linear_weights(model) if bf16_generation(model) else []
    try:
        with autocast_context(model):
            yield
    finally:
        restore_weights(replaced)


def prompt_ids(tokenizer: Any, model_type: str, text: str) -> list[int]:
    """A rendered prompt's token ids exactly as training saw them (causal: `data.encode_prompt`)."""
    return encode_prompt(tokenizer, text) if model_type == "causal" else tokenizer(text)["input_ids"]


def encode_batch(
    tokenizer: Any, model_type: str, prompts: Sequence[str | list[int]], device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Encode and pad prompts (rendered text, or ids from `prompt_ids`) into one batch.

    The one encode-and-pad rule of generation: evaluation, chat and serving all pad here, so a
    served answer is the answer evaluation scored. Causal models continue from the last position,
    so they are padded on the left; seq2seq encoder inputs on the right.
    """
    ids = [prompt_ids(tokenizer, model_type, p) if isinstance(p, str) else list(p) for p in prompts]
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    rows, masks = [], []
    for x in ids:
        fill, ones, zeros = [pad] * (width - len(x)), [1] * len(x), [0] * (width - len(x))
        rows.append(fill + x if model_type == "causal" else x + fill)
        masks.append(zeros + ones if model_type == "causal" else ones + zeros)
    return {
        "input_ids": torch.tensor(rows, dtype=torch.long, device=device),
        "attention_mask": torch.tensor(masks, dtype=torch.long, device=device),
    }


def clean_output(text: str, task_family: str) -> str:
    return extract_sql(text) if task_family == "sql" else text.strip()


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


class _OneModel:
    """The decode loop's runtime (`serve.decode.Runtime`) for one model and no adapters to choose."""

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
    from loratune.serve.decode import DecodeBatch
    from loratune.serve.jobs import Job

    decoder = DecodeBatch(_OneModel(model, tokenizer))
    pending = collections.deque(sorted(range(len(prompts)), key=lambda i: -len(prompts[i])))
    stop = [";"] if task_family == "sql" else []
    running: dict[int, Job] = {}
    outputs: list[str] = [""] * len(prompts)
    group = max(1, batch_size // 4)
    while pending or running:
        free = batch_size - decoder.running
        if pending and (free >= min(group, len(pending)) or not decoder.running):
            joining = {pending.popleft(): None for _ in range(min(free, len(pending)))}
            for index in joining:
                running[index] = Job("model", prompt_ids(tokenizer, "causal", prompts[index]),
                                     max_tokens=settings.max_new_tokens, stop=stop)
            decoder.admit([running[index] for index in joining])
        else:
            decoder.step()
        for index in [i for i, job in running.items() if job.finished]:
            job = running.pop(index)
            if job.error is not None:  # the decode loop turns exceptions into failed jobs (a server's way)
                raise RuntimeError(job.error)
            outputs[index] = clean_output(job.text, task_family)
            if on_answer is not None:
                on_answer(index, outputs[index])
    return outputs
