"""The chunked vocabulary cross-entropy (`loratune.training.loss`) against the plain one, alternated per step.

Trains SmolLM2-135M as loratune's default training does (LoRA r16 on every projection, dropout 0,
decoder layers compiled, eager attention for short batches, bf16 autocast where native) and runs
each batch twice, once with each loss, in alternating order, so the machine's drift hits both
alike. Prints useful tokens/s and minor page faults per step for each, and the ratio. Like
train_levers.py (whose model and batches it reuses) it runs with OMP_WAIT_POLICY=PASSIVE, which
slows both sides alike (0.78x for training: 2-core Intel Xeon with AMX, 2026-11-26, commit 79e3561,
docs/log.md), so compare the ratio, not the tokens/s.

Each batch is first run once untimed (alternately with either loss): a batch's first run pays
one-time costs of its width (oneDNN kernels built for new shapes, first-touch pages) that the
second run does not, and with the pair alone in alternating order that share fell unevenly: the
same loss on both sides (A/A) measured 1.093x over 27 steps; with the untimed run 0.998x.

`--against-chunk N` compares the chunked loss at two chunk sizes instead (the other side at
N logits per chunk; `loratune.training.loss.CHUNK_ELEMENTS` is the default side).

    .venv/bin/python bench/fused_loss.py [--steps 40] [--against-chunk N] [--json]
    LORATUNE_PRECISION=fp32 .venv/bin/python bench/fused_loss.py      # the path of a CPU without bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import train_levers as levers  # noqa: E402

import loratune.training.loss as loss_module  # noqa: E402
from loratune.models.precision import bf16_supported  # noqa: E402
from loratune.training.attention import use_attention_for  # noqa: E402
from loratune.training.compilation import compile_layers, set_use_cache  # noqa: E402
from loratune.training.loss import completion_loss_sum  # noqa: E402

WARMUP = 3  # steps left out of the figures (compiling, first shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="batches, each trained once per loss")
    parser.add_argument("--config", default=str(ROOT / "configs" / "text2sql-smollm2.yaml"))
    parser.add_argument("--against-chunk", type=int, default=None, metavar="N",
                        help="the other side: the chunked loss at N logits per chunk (default: the plain loss)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    default_chunk = loss_module.CHUNK_ELEMENTS
    other = "plain" if args.against_chunk is None else f"chunk{args.against_chunk}"
    bf16 = bf16_supported("cpu")
    features, cfg = levers.load_features(args.config, 256)
    m = levers.Model(cfg.model, "fp32", None, True, "bf16" if bf16 else "fp32")
    variant = levers.Variant(dropout=0.0, prepared=True, attn="eager")
    m.configure(variant)
    batches = levers.batches(features, variant)
    compile_layers(m.model)
    set_use_cache(m.model, False)

    def step(i: int, fused: bool) -> int:
        batch = levers.collate(features, batches[i % len(batches)], m.pad_id)
        use_attention_for(m.model, "cpu", batch["input_ids"].shape[1])
        loss_module.CHUNK_ELEMENTS = default_chunk if fused or args.against_chunk is None else args.against_chunk
        chunked = fused or args.against_chunk is not None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _, answer_tokens = completion_loss_sum(m.model, batch, m.model if chunked else None)
        (loss / answer_tokens).backward()
        m.opt.step()
        m.opt.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())

    totals = {name: {"s": 0.0, "tokens": 0, "faults": 0} for name in (other, "fused")}
    for i in range(args.steps):
        step(i, i % 2 == 0)  # untimed: the batch's first run (see the module docstring)
        for name in (other, "fused") if i % 2 == 0 else ("fused", other):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            started = time.perf_counter()
            tokens = step(i, name == "fused")
            if i >= WARMUP:
                totals[name]["s"] += time.perf_counter() - started
                totals[name]["tokens"] += tokens
                totals[name]["faults"] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    counted = args.steps - WARMUP
    report = {"precision": "bf16" if bf16 else "fp32", "steps": counted}
    for name, t in totals.items():
        report[name] = {"tokens_per_s": round(t["tokens"] / t["s"], 1), "minor_faults_per_step": round(t["faults"] / counted)}
        print(f"{name:6s} {report[name]['tokens_per_s']:8.1f} useful tok/s  "
              f"{report[name]['minor_faults_per_step']:8d} minor page faults per step")
    report["ratio"] = round(report["fused"]["tokens_per_s"] / report[other]["tokens_per_s"], 3)
    print(f"fused / {other}: {report['ratio']:.3f}x ({report['precision']}, {counted} steps each after {WARMUP})")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
