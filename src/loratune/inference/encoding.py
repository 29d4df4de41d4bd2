"""Prompts into token ids for generation: the one encode-and-pad rule that evaluation, chat and
serving share, and the generation settings as transformers' keyword arguments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from loratune.config import GenerationSettings
from loratune.data import encode_prompt


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
