"""Batched generation shared by evaluation, chat and serving.

Prompts are sorted by length so each batch pads little, generated greedily unless the settings
say otherwise, and cut to the answer alone: the prompt is stripped, generation stops at EOS,
and SQL answers are reduced to their first statement so metrics judge the query, not the chatter.
"""

from __future__ import annotations

import contextlib
import re
import threading
from typing import Any, Iterator

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


def autocast_context(model: Any) -> contextlib.AbstractContextManager:
    """bf16 autocast where the hardware has it: ~4x faster matmuls on this CPU, same choice as training."""
    from loratune.models import bf16_supported

    device = next(model.parameters()).device.type
    if next(model.parameters()).dtype == torch.float32 and bf16_supported(device):
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _encode_batch(tokenizer: Any, kind: str, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    ids = [encode_prompt(tokenizer, p) if kind == "causal" else tokenizer(p)["input_ids"] for p in prompts]
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    # Causal models continue from the last position, so they are padded on the left.
    if kind == "causal":
        input_ids = [[pad] * (width - len(x)) + x for x in ids]
        mask = [[0] * (width - len(x)) + [1] * len(x) for x in ids]
    else:
        input_ids = [x + [pad] * (width - len(x)) for x in ids]
        mask = [[1] * len(x) + [0] * (width - len(x)) for x in ids]
    return {
        "input_ids": torch.tensor(input_ids, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def clean_output(text: str, task_kind: str) -> str:
    return extract_sql(text) if task_kind == "sql" else text.strip()


@torch.inference_mode()
def generate_texts(
    model: Any,
    tokenizer: Any,
    kind: str,
    prompts: list[str],
    settings: GenerationSettings,
    *,
    batch_size: int = 16,
    task_kind: str = "text",
    progress: str | None = None,
) -> list[str]:
    """Generate one answer per rendered prompt, in the prompts' order."""
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    kwargs = generation_kwargs(settings, tokenizer)
    if task_kind == "sql":
        # Only the first statement is judged, so stop there: chat models otherwise keep explaining
        # their query for the rest of max_new_tokens, which is most of the evaluation time.
        kwargs.update(stop_strings=[";"], tokenizer=tokenizer)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=progress, disable=progress is None, unit="batch"):
        inputs = _encode_batch(tokenizer, kind, [prompts[i] for i in batch], device)
        with autocast_context(model):
            generated = model.generate(**inputs, **kwargs)
        if kind == "causal":
            generated = generated[:, inputs["input_ids"].shape[1]:]
        for index, row in zip(batch, generated):
            outputs[index] = clean_output(tokenizer.decode(row, skip_special_tokens=True), task_kind)
    return outputs


def stream_text(model: Any, tokenizer: Any, kind: str, prompt: str, settings: GenerationSettings) -> Iterator[str]:
    """Yield the answer to one prompt piece by piece as it is generated (for chat and SSE)."""
    from transformers import TextIteratorStreamer

    device = next(model.parameters()).device
    inputs = _encode_batch(tokenizer, kind, [prompt], device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=kind == "causal", skip_special_tokens=True)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with torch.inference_mode(), autocast_context(model):
                model.generate(**inputs, **generation_kwargs(settings, tokenizer), streamer=streamer)
        except BaseException as exc:  # surfaced in the caller's thread below
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield from (piece for piece in streamer if piece)
    thread.join()
    if errors:
        raise errors[0]
