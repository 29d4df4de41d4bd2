"""Training-speed levers, one at a time, as ratios against loratune's current default in one process.

Each variant trains the demo model (SmolLM2-135M, LoRA r16 on every projection) on the demo rows
with a plain PyTorch loop (forward, backward, AdamW step), so the ratio shows the lever itself and
not the Trainer around it; `trainer` measures the Trainer's own per-step overhead separately.
Variants run interleaved A/B/A/B (`--rounds`) because the machine is shared and absolute numbers
drift; the table shows the median ratio of useful tokens/s against `default` of the same round.

    .venv/bin/python bench/train_levers.py [--variants default,dropout0,...] [--steps 3] [--rounds 2]
    .venv/bin/python bench/train_levers.py --profile VARIANT   # torch.profiler table of one step
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from loratune.config import LoraSettings, load_config  # noqa: E402
from loratune.data import load_splits, tokenize_rows  # noqa: E402
from loratune.lora import apply_lora  # noqa: E402
from loratune.models import bf16_supported, load_model  # noqa: E402
from loratune.tasks import get_task  # noqa: E402


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
    labels = batch["labels"]
    targets = labels[:, 1:]
    first = int((targets != -100).any(dim=0).nonzero()[0])
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                logits_to_keep=labels.shape[1] - first)
    logits = out.logits[:, :-1].float()
    tgt = labels[:, first + 1 :]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    return loss / (tgt != -100).sum()


class Runner:
    def __init__(self, name: str, v: Variant, model_name: str, features: list[dict], bf16: bool) -> None:
        self.name, self.v, self.features, self.bf16 = name, v, features, bf16
        dtype = torch.bfloat16 if v.weights == "bf16" else torch.float32
        loaded = load_model(model_name, dtype=dtype)
        loaded.model.set_attn_implementation(v.attn)
        self.pad_id = loaded.tokenizer.pad_token_id
        torch.manual_seed(0)
        self.model = apply_lora(loaded.model, "causal", LoraSettings(r=16, alpha=32, dropout=v.dropout))
        self.model.train()
        for module in self.model.modules():
            if hasattr(module, "lora_A"):
                module.cast_input_dtype_enabled = v.peft_cast
        self.forward = torch.compile(self.model, dynamic=True) if v.compile else self.model
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-4)
        self.batches = batches(features, v)
        self.cursor = 0

    def step(self) -> int:
        index = self.batches[self.cursor % len(self.batches)]
        self.cursor += 1
        batch = collate(self.features, index, self.pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = completion_loss(self.forward, batch)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())

    def measure(self, tokens: int) -> float:
        """Useful tokens/s over steps until at least `tokens` useful tokens were trained."""
        default_threads = torch.get_num_threads()
        if self.v.threads:
            torch.set_num_threads(self.v.threads)
        done, started = 0, time.perf_counter()
        while done < tokens:
            done += self.step()
        rate = done / (time.perf_counter() - started)
        torch.set_num_threads(default_threads)
        return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "text2sql-smollm2.yaml"))
    parser.add_argument("--variants", default="default,dropout0,bf16_weights,eager,tokens4096,best")
    parser.add_argument("--tokens", type=int, default=3000, help="useful tokens per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--profile", default=None, help="profile one step of this variant and exit")
    args = parser.parse_args()
    bf16 = bf16_supported("cpu")
    features, cfg = load_features(args.config, args.rows)
    table = variants(bf16)
    if args.profile:
        runner = Runner(args.profile, table[args.profile], cfg.model, features, bf16)
        runner.step()
        runner.step()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            tokens = sum(runner.step() for _ in range(2))
        print(f"{tokens} useful tokens in 2 steps")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return
    names = args.variants.split(",")
    if "default" not in names:
        names.insert(0, "default")
    runners = {}
    for name in names:
        runners[name] = Runner(name, table[name], cfg.model, features, bf16)
        runners[name].measure(600)  # warm-up: first-touch allocations, compilation
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            rates[name].append(runners[name].measure(args.tokens))
            print(f"round {r} {name}: {rates[name][-1]:.1f} tok/s", file=sys.stderr, flush=True)
    print(f"\nnative bf16: {bf16}; precision {'bf16 autocast' if bf16 else 'fp32'}; threads {torch.get_num_threads()}\n")
    print("| variant | settings | useful tok/s (median) | ratio to default (median of rounds) |")
    print("|---|---|---|---|")
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(rates[name], rates["default"]))
        print(f"| {name} | {table[name]} | {statistics.median(rates[name]):.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
