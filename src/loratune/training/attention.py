"""Which attention implementation trains a batch fastest: eager or SDPA, per device and width.

transformers reads `config._attn_implementation` at each forward, so the choice can change from
one batch to the next. Uncompiled training picks per batch (`use_attention_for`); a compiled run
keeps one implementation throughout (`run_attention`), because each is a graph of its own to
compile (loratune/training/compilation.py).
"""

from __future__ import annotations

from typing import Any

import torch

EAGER_ATTENTION_MAX_TOKENS = 256
"""On CPU, batches up to this many tokens wide train faster with eager attention than with SDPA."""


def attention_for(device: str, width: int) -> str:
    """The attention implementation that trains a batch `width` tokens wide fastest on `device`.

    On CPU, SDPA's fused kernel has a slow backward pass for short rows: at 128 tokens eager
    attention (plain bf16 matmuls + softmax) takes 0.66x its time, at 512 tokens 2.3x, at 2048
    5.3x (fwd + bwd under bf16 autocast, bench/train_levers.py's attention lever). GPUs keep SDPA.
    Checked compiled, as training runs (bench/attention_speed.py, 2-core AMD EPYC, 2026-11-27,
    commit 4c3bff3): fp32 ties up to 192 tokens (and eager is ahead on widths SDPA has not met
    yet), SDPA leads from 320 (1.09x; 1.15x at 512); bf16 eager leads up to 320 (1.12-1.17x) and
    ties at 512.
    """
    return "eager" if torch.device(device).type == "cpu" and width <= EAGER_ATTENTION_MAX_TOKENS else "sdpa"


def run_attention(device: str, widths: list[int]) -> str:
    """The one attention implementation a compiled run trains with: the one `attention_for` picks
    for the width 90% of the rows fit in.

    Compiled, each implementation is a graph of its own, and the first batch of the other kind
    compiles again: in the demo, ~30-40 s more on a cold cache (of a 6-minute budget) for the 0.5%
    of its rows over 256 tokens."""
    ordered = sorted(widths)
    return attention_for(device, ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] if ordered else 0)


def use_attention_for(model: Any, device: str, width: int, fixed: str | None = None) -> None:
    """Switch `model` to the fastest attention for this batch (or to `fixed`: a compiled run's one
    implementation, `run_attention`)."""
    wanted = fixed or attention_for(device, width)
    if model.config._attn_implementation != wanted:  # a peft model forwards both to the base model
        model.set_attn_implementation(wanted)
