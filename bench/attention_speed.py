"""Eager attention against SDPA in compiled training, by batch width, alternated in one process.

`loratune.training.attention` trains CPU batches up to `EAGER_ATTENTION_MAX_TOKENS` wide with eager
attention and wider ones with SDPA; a compiled run keeps the one its 90th-percentile width gets.
That threshold was first measured uncompiled under bf16 autocast (bench/train_levers.py). This bench
checks it where it is used: SmolLM2-135M trained as loratune trains it (LoRA r16 on every
projection, dropout 0, decoder layers compiled, the chunked completion loss, bf16 autocast where
native), one compiled graph per implementation, on batches of demo rows cut or repeated to each
width. Each batch runs once untimed, then once with each implementation in alternating order, so a
drifting machine moves both alike (as bench/fused_loss.py). Prints useful tokens/s of each side and
the ratio per width; `--json` prints one JSON object last.

    .venv/bin/python bench/attention_speed.py [--widths 96,192,320,512] [--pairs 6] [--json]
    LORATUNE_PRECISION=fp32 .venv/bin/python bench/attention_speed.py   # the path of a CPU without bf16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Spinning OpenMP threads, as in a default training run (train_levers.py, imported below, would
# otherwise make them sleep, which slows each side differently).
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import train_levers as levers  # noqa: E402

from loratune.models.precision import bf16_supported  # noqa: E402
from loratune.training.attention import EAGER_ATTENTION_MAX_TOKENS  # noqa: E402
from loratune.training.compilation import compile_layers  # noqa: E402
from loratune.training.loss import completion_loss_sum  # noqa: E402

IMPLEMENTATIONS = ("eager", "sdpa")


def batch_of_width(features: list[dict], start: int, rows: int, width: int, pad_id: int) -> dict[str, torch.Tensor]:
    """`rows` demo rows padded to `width` tokens as a length-grouped batch is: the first row fills it,
    each next one is ~1% shorter (the demo's batches of 8 are 1.5% padding). Longer rows are cut from
    the left (the answer and its loss stay), shorter ones repeated end to end (labels kept).

    The padding is there so SDPA gets a mask, as in training: with an all-ones mask transformers
    lets SDPA run its causal kernel without one. (At 96 tokens, fp32, it made no measurable
    difference: SDPA 0.989x eager without padding, 1.004x with.)"""
    ids = torch.full((rows, width), pad_id)
    mask = torch.zeros((rows, width), dtype=torch.long)
    labels = torch.full((rows, width), -100)
    for r in range(rows):
        n = width - (r * width) // 100
        seq, lab, k = [], [], start + r
        while len(seq) < n:
            f = features[k % len(features)]
            seq, lab, k = seq + f["input_ids"], lab + f["labels"], k + rows
        ids[r, :n], mask[r, :n], labels[r, :n] = torch.tensor(seq[-n:]), 1, torch.tensor(lab[-n:])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="96,192,320,512", help="batch widths in tokens")
    parser.add_argument("--rows", type=int, default=8, help="rows per batch")
    parser.add_argument("--pairs", type=int, default=6, help="timed batches per width, each run with both")
    parser.add_argument("--config", default=str(ROOT / "configs" / "text2sql-smollm2.yaml"))
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    bf16 = bf16_supported("cpu")
    precision = "bf16" if bf16 else "fp32"
    features, cfg = levers.load_features(args.config, 512)
    m = levers.Model(cfg.model, "fp32", None, True, precision)
    m.configure(levers.Variant(dropout=0.0, prepared=True, attn="eager"))
    compile_layers(m.model)

    def step(batch: dict[str, torch.Tensor], implementation: str) -> float:
        if m.model.config._attn_implementation != implementation:
            m.model.set_attn_implementation(implementation)
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _, answer_tokens = completion_loss_sum(m.model, batch, m.model)
        (loss / answer_tokens).backward()
        m.opt.step()
        m.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    for implementation in IMPLEMENTATIONS:  # compile both graphs before any timing
        step(batch_of_width(features, 0, args.rows, widths[0], m.pad_id), implementation)
    report: dict = {"precision": precision, "rows": args.rows, "threshold": EAGER_ATTENTION_MAX_TOKENS, "widths": {}}
    print(f"{precision}, {args.rows} rows per batch, {args.pairs} batches per width; loratune picks eager "
          f"up to {EAGER_ATTENTION_MAX_TOKENS} tokens\n\n| width | eager tok/s | sdpa tok/s | sdpa / eager |\n|---|---|---|---|")
    for width in widths:
        seconds = dict.fromkeys(IMPLEMENTATIONS, 0.0)
        for i in range(args.pairs):
            batch = batch_of_width(features, (i + 1) * args.rows, args.rows, width, m.pad_id)
            step(batch, IMPLEMENTATIONS[i % 2])  # untimed: the width's first-run costs
            for implementation in IMPLEMENTATIONS if i % 2 == 0 else IMPLEMENTATIONS[::-1]:
                seconds[implementation] += step(batch, implementation)
        tokens = args.pairs * sum(width - (r * width) // 100 for r in range(args.rows))
        rates = {k: round(tokens / s, 1) for k, s in seconds.items()}
        ratio = round(rates["sdpa"] / rates["eager"], 3)
        report["widths"][str(width)] = {**rates, "sdpa_over_eager": ratio}
        print(f"| {width} | {rates['eager']} | {rates['sdpa']} | {ratio:.3f}x |", flush=True)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
