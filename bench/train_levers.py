"""Training-speed levers, one at a time, as ratios against peft's defaults in one process.

Each variant trains the demo model (SmolLM2-135M, LoRA r16 on every projection) on the demo rows
with a plain PyTorch loop (forward, backward, AdamW step), so the ratio shows the lever itself and
not the Trainer around it. (The Trainer's own per-step work is small: in a 40-step compiled fp32
run, 169.9 of 173.5 s were inside `training_step`; the optimizer 0.3 s, gradient clipping 0.2 s,
logging every step and two 8-row evaluations ~2 s; 2-core AMD EPYC as AVX2-only, 2026-11-27,
commit 4c3bff3.) `default` is peft's defaults: LoRA dropout 0.05, fp32 frozen weights re-cast by
autocast, SDPA attention. Variants run interleaved A/B/A/B (`--rounds`) because the machine is
shared and absolute numbers drift; the table shows the median ratio of useful tokens/s (wall and
per CPU-second) against `default` of the same round.

The defaults are the command behind the table in docs/benchmarks.md: the model cut to its first 10
decoder layers (`--layers 10`), the variants of that table (`dropout0`; `d0_prepared`, which adds
the frozen projections stored in bf16; `d0_prepared_eager`, which adds eager attention;
`bf16_weights`; `tokens2048` and `tokens4096`), 2 rounds of 3,000 useful tokens each.

    .venv/bin/python bench/train_levers.py [--variants default,dropout0,...] [--layers 10] [--rounds 2]
    .venv/bin/python bench/train_levers.py --profile VARIANT   # torch.profiler table of one step
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning, so this process's CPU time counts work, not
# waiting: on a shared machine, useful tokens per CPU-second is the figure that stays comparable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from loratune.config import LoraSettings, load_config  # noqa: E402
from loratune.data import load_splits, tokenize_rows  # noqa: E402
from loratune.models.load import load_model  # noqa: E402
from loratune.models.lora import apply_lora
from loratune.models.precision import (
    bf16_supported,  # noqa: E402
    prepare_for_precision,
)
from loratune.tasks import get_task  # noqa: E402
from loratune.training.loss import completion_loss_sum  # noqa: E402


DEFAULT_VARIANTS = "default,dropout0,d0_prepared,d0_prepared_eager,bf16_weights,tokens2048,tokens4096"


@dataclass(frozen=True)
class Variant:
    dropout: float = 0.05
    weights: str = "fp32"  # frozen base weights: fp32 (autocast re-casts them) or bf16
    attn: str = "sdpa"
    batch_rows: int = 8
    token_budget: int | None = None  # rows per batch chosen by padded tokens instead
    compile: bool = False
    threads: int | None = None
    peft_cast: bool = True  # peft casts each adapted layer's input to the LoRA weights' dtype (fp32)
    prepared: bool = False  # loratune.models.lora.prepare_for_precision: frozen projections in bf16, no peft cast


def variants(bf16: bool) -> dict[str, Variant]:
    base = Variant()
    best = replace(base, dropout=0.0, weights="bf16" if bf16 else "fp32", peft_cast=not bf16)
    return {
        "default": base,
        "dropout0": replace(base, dropout=0.0),
        "bf16_weights": replace(base, weights="bf16"),
        "eager": replace(base, attn="eager"),
        "rows16": replace(base, batch_rows=16),
        "tokens2048": replace(base, token_budget=2048),
        "tokens4096": replace(base, token_budget=4096),
        "nocast": replace(base, peft_cast=False),
        "bf16_weights_nocast": replace(base, weights="bf16", peft_cast=False),
        "d0_nocast": replace(base, dropout=0.0, peft_cast=False),
        "d0_prepared": replace(base, dropout=0.0, prepared=True),
        "d0_prepared_eager": replace(base, dropout=0.0, prepared=True, attn="eager"),
        "d0_prepared_tokens2048": replace(base, dropout=0.0, prepared=True, token_budget=2048),
        "d0_prepared_rows16": replace(base, dropout=0.0, prepared=True, batch_rows=16),
        "d0_eager": replace(base, dropout=0.0, attn="eager"),
        "d0_rows4": replace(base, dropout=0.0, batch_rows=4),
        "d0_rows16": replace(base, dropout=0.0, batch_rows=16),
        "d0_tokens1024": replace(base, dropout=0.0, token_budget=1024),
        "d0_tokens2048": replace(base, dropout=0.0, token_budget=2048),
        "d0_compile": replace(base, dropout=0.0, compile=True),
        "d0_prepared_eager_compile": replace(base, dropout=0.0, prepared=True, attn="eager", compile=True),
        "d0_prepared_eager_threads1": replace(base, dropout=0.0, prepared=True, attn="eager", threads=1),
        "best": best,
        "best_tokens2048": replace(best, token_budget=2048),
        "best_tokens4096": replace(best, token_budget=4096),
        "best_eager_tokens4096": replace(best, token_budget=4096, attn="eager"),
        "best_compile": replace(best, compile=True),
        "best_threads1": replace(best, threads=1),
    }


def load_features(config: str, rows: int) -> tuple[list[dict], object]:
    cfg = load_config(config, [f"data.max_train_rows={rows}"])
    loaded = load_model(cfg.model)
    task = get_task(cfg.task)
    train_rows, _ = load_splits(cfg.data, task, cfg.train.seed)
    features, _ = tokenize_rows(train_rows, task, loaded.tokenizer, "causal", cfg.data)
    return features, cfg


def batches(features: list[dict], v: Variant, seed: int = 0) -> list[list[int]]:
    """Length-grouped batches: shuffle, sort megabatches of 50 batches by length, cut."""
    rng = random.Random(seed)
    order = list(range(len(features)))
    rng.shuffle(order)
    length = [len(f["input_ids"]) for f in features]
    mega = 50 * v.batch_rows
    grouped = []
    for i in range(0, len(order), mega):
        grouped += sorted(order[i : i + mega], key=lambda j: -length[j])
    if v.token_budget is None:
        out = [grouped[i : i + v.batch_rows] for i in range(0, len(grouped), v.batch_rows)]
    else:
        out, current = [], []
        for j in grouped:
            width = max([length[k] for k in current] + [length[j]])
            if current and width * (len(current) + 1) > v.token_budget:
                out.append(current)
                current = []
            current.append(j)
        out.append(current)
    rng.shuffle(out)
    return out


def collate(features: list[dict], index: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(features[i]["input_ids"]) for i in index)
    ids = torch.full((len(index), width), pad_id)
    mask = torch.zeros((len(index), width), dtype=torch.long)
    labels = torch.full((len(index), width), -100)
    for row, i in enumerate(index):
        n = len(features[i]["input_ids"])
        ids[row, :n] = torch.tensor(features[i]["input_ids"])
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(features[i]["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def completion_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """loratune's plain completion loss (logits from the first answer position on), per answer token."""
    loss, _, answer_tokens = completion_loss_sum(model, batch)
    return loss / answer_tokens


class Model:
    """One LoRA model per weights dtype, shared by the variants (memory: the machine is shared)."""

    def __init__(self, model_name: str, weights: str, layers: int | None, prepared: bool, precision: str) -> None:
        dtype = torch.bfloat16 if weights == "bf16" else torch.float32
        loaded = load_model(model_name, dtype=dtype)
        if layers:  # a shallower model: same per-layer shapes, quicker rounds
            loaded.model.model.layers = loaded.model.model.layers[:layers]
            loaded.model.config.num_hidden_layers = layers
        self.pad_id = loaded.tokenizer.pad_token_id
        torch.manual_seed(0)
        self.model = apply_lora(loaded.model, "causal", LoraSettings(r=16, alpha=32, dropout=0.05))
        self.model.train()
        if prepared:
            prepare_for_precision(self.model, precision)
        # fused=True: the Trainer's default optimizer (adamw_torch_fused) since torch 2.8
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4, fused=True)
        self.compiled = None

    def configure(self, v: Variant) -> None:
        self.model.base_model.model.set_attn_implementation(v.attn)
        for module in self.model.modules():
            if hasattr(module, "lora_dropout"):
                for name in list(module.lora_dropout.keys()):
                    module.lora_dropout[name] = torch.nn.Dropout(v.dropout) if v.dropout else torch.nn.Identity()
                module.cast_input_dtype_enabled = v.peft_cast and not v.prepared


class Runner:
    def __init__(self, name: str, v: Variant, model: Model, features: list[dict], bf16: bool) -> None:
        self.name, self.v, self.m, self.features, self.bf16 = name, v, model, features, bf16
        self.batches = batches(features, v)
        self.cursor = 0

    def step(self) -> int:
        index = self.batches[self.cursor % len(self.batches)]
        self.cursor += 1
        batch = collate(self.features, index, self.m.pad_id)
        forward = self.m.model
        if self.v.compile:
            self.m.compiled = self.m.compiled or torch.compile(self.m.model, dynamic=True)
            forward = self.m.compiled
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = completion_loss(forward, batch)
        loss.backward()
        self.m.opt.step()
        self.m.opt.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())

    def measure(self, tokens: int) -> tuple[float, float]:
        """(useful tokens per wall second, per CPU second of this process) until `tokens` were trained."""
        default_threads = torch.get_num_threads()
        if self.v.threads:
            torch.set_num_threads(self.v.threads)
        self.m.configure(self.v)
        done, wall, cpu = 0, time.perf_counter(), time.process_time()
        while done < tokens:
            done += self.step()
        rates = done / (time.perf_counter() - wall), done / (time.process_time() - cpu)
        torch.set_num_threads(default_threads)
        return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "text2sql-smollm2.yaml"))
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help="comma-separated; `default` is always run (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=3000, help="useful tokens per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--profile", default=None, help="profile two steps of this variant and exit")
    parser.add_argument("--layers", type=int, default=10,
                        help="keep only the first N decoder layers (0: all 30 of SmolLM2-135M; default: %(default)s)")
    args = parser.parse_args()
    bf16 = bf16_supported("cpu")
    features, cfg = load_features(args.config, args.rows)
    table = variants(bf16)
    models: dict[tuple[str, bool], Model] = {}

    def runner(name: str) -> Runner:
        v = table[name]
        key = (v.weights, v.prepared)
        if key not in models:
            models[key] = Model(cfg.model, v.weights, args.layers, v.prepared, "bf16" if bf16 else "fp32")
        return Runner(name, v, models[key], features, bf16)

    if args.profile:
        r = runner(args.profile)
        r.measure(1)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            tokens = sum(r.step() for _ in range(2))
        print(f"{tokens} useful tokens in 2 steps")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return
    names = args.variants.split(",")
    if "default" not in names:
        names.insert(0, "default")
    runners = {name: runner(name) for name in names}
    for r in runners.values():
        r.measure(1)  # warm-up: first-touch allocations, kernel selection, compilation
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(args.rounds):
        for name in names:
            w, c = runners[name].measure(args.tokens)
            wall[name].append(w)
            cpu[name].append(c)
            print(f"round {rnd} {name}: {w:.1f} tok/s wall, {c:.1f} tok per CPU-s", file=sys.stderr, flush=True)
    depth = f"{args.layers} of its layers" if args.layers else "all layers"
    print(f"\n{cfg.model} ({depth}); native bf16: {bf16}; precision {'bf16 autocast' if bf16 else 'fp32'}; "
          f"threads {torch.get_num_threads()}\n")
    print("| variant | settings | useful tok/s | ratio (wall) | useful tok per CPU-s | ratio (CPU time) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        rw = statistics.median(a / b for a, b in zip(wall[name], wall["default"]))
        rc = statistics.median(a / b for a, b in zip(cpu[name], cpu["default"]))
        changed = {k: v for k, v in vars(table[name]).items() if v != vars(table["default"])[k]}
        print(f"| {name} | {changed or '-'} | {statistics.median(wall[name]):.1f} | {rw:.2f}x | "
              f"{statistics.median(cpu[name]):.1f} | {rc:.2f}x |")


if __name__ == "__main__":
    main()
