"""Training speed and model FLOP utilisation (MFU): three recipes on the same model, rows and steps.

Recipes (each trains the same rows once, in one process, one after the other):
  original  the FLAN-T5 recipe's way of training (portfolio-manager's FINE-TUNING.md): every row
            padded to the fixed maximum length, random order, the model's own loss over every
            position, LoRA dropout 0.05, bf16 weights where bf16 is native (else fp32);
  plain_hf  what a user of the ecosystem gets with defaults: transformers' Trainer + peft,
            DataCollatorForSeq2Seq dynamic padding, random order, LoRA dropout 0.05, bf16=True
            where bf16 is native (else fp32); same LoRA rank and targets as loratune;
  loratune  loratune's defaults through loratune's own training path (`train_run`); the
            speed-related keys the demo config pins (lora.dropout, train.weights_dtype) are
            reset to the library's defaults.

Useful tokens are the non-padding tokens a recipe trained on. MFU = useful tokens/s x FLOP per
useful token / matmul peak of the precision the recipe computed in. Each recipe is also reported
after its first step (`tokens_per_s_after_first_step`): the first step pays one-time costs, most
of all the compiling of `train.compile` (`--compile true`, the default here; `auto` compiles only
from 150 steps, so it would leave this bench's 40 steps uncompiled, unlike the time-budgeted runs
of the shipped configs), so the whole-run figure depends on the run's length and the
after-first-step one is the pace a longer run keeps.

Peak: the best of short bursts of 2048 x 2048 matmuls (fp32, and bf16 where native), measured
before, between and after the recipes; `peak_gflops` is the median of those measurements, so on
a machine shared with other work it is the share this process got while the recipes ran.

FLOP per useful token, for a decoder with frozen base weights and LoRA adapters (2 FLOP per
multiply-add; T = a row's length, A = its answer tokens, d = hidden size, V = vocabulary):
  frozen linear layers   4 x P          forward (2P) + gradient w.r.t. activations (2P); no
                                        weight gradient: P = parameters of the decoder layers'
                                        linear projections (embeddings excluded)
  LoRA                   6 x r x (in + out) per adapted projection: forward, gradient w.r.t. the
                                        input, gradient w.r.t. A and B
  attention scores       3 x 2 x 2 x (heads x head_dim) x (T + 1) / 2 per layer: QK^T and
                                        attention x V over the causal context (on average
                                        (T + 1) / 2 keys), forward + 2x that backward
  vocabulary projection  4 x d x V x A / T: only where the loss needs it (the answer), forward +
                                        gradient w.r.t. the hidden state (the tied embedding is
                                        frozen)
Norms, activations, rotary embeddings and the optimizer are left out (a few % of the FLOPs).
The figure is averaged over the bench's rows (sum over rows / useful tokens).

A recipe named twice in `--recipes` runs twice and is reported as the mean of its runs (each run's
figures under `runs`). `--recipes plain_hf,loratune,plain_hf` brackets loratune between two
baseline runs, so a machine whose speed drifts during the bench (this shared one drifts by up to
1.7x within an hour) moves the baseline the way it moved loratune, instead of tilting the ratio.

`gemm_only_mfu`: the MFU of the step's matmuls alone (those the formula counts, at the model's own
shapes for a batch of mean-length rows, timed back to back with nothing between them, before the
recipes run): what a recipe would reach if everything else took no time, so no recipe's MFU can
pass it.

The defaults are the command behind the table in docs/benchmarks.md: 40 steps of 8 demo rows,
`--compile true`, `--recipes plain_hf,loratune,plain_hf`.

    .venv/bin/python bench/train_speed.py [--steps 40] [--batch-size 8] [--compile true|auto|false]
        [--recipes plain_hf,loratune,plain_hf] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from loratune.config import LoraSettings, RunConfig, TrainSettings, load_config  # noqa: E402
from loratune.models.precision import bf16_supported  # noqa: E402
from loratune.training.run import train_run  # noqa: E402

# On a CUDA machine everything runs on the GPU (as loratune does there) and the peak is taken on it.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PEAK_SIZE = 8192 if DEVICE == "cuda" else 2048


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- the machine


def matmul_gflops(dtype: torch.dtype, seconds: float, n: int = PEAK_SIZE) -> float:
    """Best GFLOP/s of bursts of n x n matmuls over `seconds` (the best burst: least disturbed)."""
    a = torch.randn(n, n, device=DEVICE).to(dtype)
    b = torch.randn(n, n, device=DEVICE).to(dtype)
    a @ b  # first call: oneDNN (cuBLAS) picks and caches its kernel
    _sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(2):
            a @ b
        _sync()
        best = max(best, 2 * 2 * n**3 / (time.perf_counter() - started) / 1e9)
    return best


class Peaks:
    """Matmul peaks measured at several moments of the run; the median is reported."""

    def __init__(self, precisions: list[str], seconds: float) -> None:
        self.samples: dict[str, list[float]] = {p: [] for p in precisions}
        self.seconds = seconds

    def measure(self) -> None:
        for precision in self.samples:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            self.samples[precision].append(matmul_gflops(dtype, self.seconds))

    def gflops(self) -> dict[str, float]:
        return {p: round(statistics.median(s), 1) for p, s in self.samples.items()}


# ---------------------------------------------------------------- FLOPs per useful token


def _shapes(cfg: RunConfig) -> tuple[Any, Any, Any]:
    """(config, the model on the meta device: shapes without weights, LoRA target modules) of `cfg`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from loratune.models.load import resolve_source
    from loratune.models.lora import default_target_modules

    config = AutoConfig.from_pretrained(resolve_source(cfg.model).path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return config, model, cfg.lora.target_modules or default_target_modules(model)


def flop_per_token(cfg: RunConfig, features: list[dict]) -> float:
    """Training FLOPs per useful token for `cfg`'s model and LoRA on these rows (formula: module doc)."""
    config, model, targets = _shapes(cfg)
    frozen = lora = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        frozen += module.in_features * module.out_features
        if targets == "all-linear" or name.split(".")[-1] in targets:
            lora += cfg.lora.r * (module.in_features + module.out_features)
    layers = config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attn_width = config.num_attention_heads * head_dim
    tokens = answer = attention = 0
    for row in features:
        t = len(row["input_ids"])
        tokens += t
        answer += sum(1 for label in row["labels"] if label != -100)
        attention += 3 * 2 * 2 * attn_width * t * (t + 1) / 2 * layers
    total = (4 * frozen + 6 * lora) * tokens + attention + 4 * config.hidden_size * config.vocab_size * answer
    return total / tokens


def gemm_only_gflops(cfg: RunConfig, features: list[dict], batch_size: int, dtype: torch.dtype,
                     repeats: int = 5) -> float:
    """GFLOP/s of a training step that did nothing but its matmuls, at the model's own shapes for
    a batch of `batch_size` mean-length rows; over the peak, an MFU no implementation passes.

    Times, per decoder layer, every matmul of the FLOP formula above (the frozen projections'
    forward and activation gradient, LoRA's six skinny matmuls per projection, attention's batched
    matmuls: QK^T and PV forward, two each backward) of one layer, times the layers, plus the
    vocabulary projection of the answer tokens (forward and activation gradient); their FLOPs (as
    `flop_per_token` counts them) over that time."""
    from loratune.training.compilation import decoder_layers

    config, model, targets = _shapes(cfg)
    layer = decoder_layers(model)[0]
    width = round(statistics.mean(len(row["input_ids"]) for row in features))
    answer = round(statistics.mean(sum(1 for x in row["labels"] if x != -100) for row in features))
    tokens, r = batch_size * width, cfg.lora.r
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=DEVICE).to(dtype)

    work = []  # (a, b, flops) per matmul of one layer; a @ b
    for name, module in layer.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        i, o = module.in_features, module.out_features
        # weights laid out as nn.Linear's (out, in), used as F.linear uses them
        weight = t(o, i)
        work += [(t(tokens, i), weight.t(), 2 * tokens * i * o), (t(tokens, o), weight, 2 * tokens * i * o)]
        if targets == "all-linear" or name.split(".")[-1] in targets:
            x, u, dy, lora_a, lora_b = t(tokens, i), t(tokens, r), t(tokens, o), t(r, i), t(o, r)
            work += [(x, lora_a.t(), 2 * tokens * i * r), (u, lora_b.t(), 2 * tokens * r * o),  # forward
                     (dy, lora_b, 2 * tokens * r * o), (u, lora_a, 2 * tokens * r * i),  # input gradient
                     (dy.t(), u, 2 * tokens * r * o), (u.t(), x, 2 * tokens * r * i)]  # B, A gradients
    q, k = t(batch_size * heads, width, head_dim), t(batch_size * heads, head_dim, width)
    scores = t(batch_size * heads, width, width)
    causal = 2 * batch_size * heads * width * (width + 1) / 2 * head_dim  # the formula's causal half
    work += [(q, k, causal), (scores, q, causal)] * 3  # QK^T and PV, forward and backward x 2
    vocab_rows = batch_size * answer
    embedding = t(config.vocab_size, config.hidden_size)  # the (tied) head, (vocabulary, hidden)
    head = [(t(vocab_rows, config.hidden_size), embedding.t(),
             2 * vocab_rows * config.hidden_size * config.vocab_size),
            (t(vocab_rows, config.vocab_size), embedding,
             2 * vocab_rows * config.hidden_size * config.vocab_size)]

    def seconds(items: list) -> float:
        best = float("inf")
        for _ in range(repeats):
            _sync()
            started = time.perf_counter()
            for a, b, _ in items:
                a @ b
            _sync()
            best = min(best, time.perf_counter() - started)
        return best

    seconds(work + head)  # first calls: oneDNN picks its kernels
    total_s = config.num_hidden_layers * seconds(work) + seconds(head)
    total_flops = config.num_hidden_layers * sum(f for _, _, f in work) + sum(f for _, _, f in head)
    return total_flops / total_s / 1e9


def bench_features(cfg: RunConfig) -> list[dict]:
    """The training rows every recipe sees, tokenized as loratune does."""
    from loratune.data import load_splits, tokenize_rows
    from loratune.models.load import load_model
    from loratune.tasks import get_task

    loaded = load_model(cfg.model)
    task = get_task(cfg.task)
    train_rows, _ = load_splits(cfg.data, task, cfg.train.seed)
    features, _ = tokenize_rows(train_rows, task, loaded.tokenizer, loaded.model_type, cfg.data)
    return features


# ---------------------------------------------------------------- recipes


def run_loratune_path(config: str, overrides: list[str]) -> dict[str, Any]:
    """One run through loratune's own `train_run`: useful tokens/s and precision from its summary."""
    summary = train_run(load_config(config, overrides), log=lambda *_: None).summary
    return {"tokens_per_s": summary["tokens_per_s"], "precision": summary["precision"],
            "steps": summary["steps"], "tokens": summary["train_tokens"], "compiled": summary["compiled"],
            "tokens_per_s_after_first_step": summary["tokens_per_s_after_first_step"]}


def run_plain_hf(cfg: RunConfig, features: list[dict], batch_size: int, out: str) -> dict[str, Any]:
    """transformers' Trainer + peft with their defaults, on the same tokenized rows."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from loratune.models.load import resolve_source
    from loratune.models.lora import default_target_modules
    from loratune.training.trainer import PaceClock

    path = resolve_source(cfg.model).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.05,
                      target_modules=cfg.lora.target_modules or default_target_modules(model), task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    bf16 = bf16_supported(DEVICE)
    steps = -(-len(features) // batch_size)
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=cfg.train.lr,
        bf16=bf16, use_cpu=DEVICE == "cpu", report_to=[], save_strategy="no", logging_steps=steps, seed=cfg.train.seed,
        include_num_input_tokens_seen="non_padding",
    )
    clock = PaceClock()  # only reads the clock at each step's end
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(features), callbacks=[clock],
                      data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100))
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    # One epoch over every row (max_steps = ceil(rows / batch size)): useful tokens are all rows' lengths.
    tokens = sum(len(f["input_ids"]) for f in features)
    return {"tokens_per_s": round(tokens / wall, 1), "precision": "bf16" if bf16 else "fp32",
            "steps": steps, "tokens": tokens, "compiled": False,
            "tokens_per_s_after_first_step": clock.tokens_per_s_after_first_step()}


RECIPES = ("original", "plain_hf", "loratune")
RATES = ("tokens_per_s", "tokens_per_s_after_first_step")


def mean_of_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A recipe run more than once: its rates averaged over the runs, each run kept under `runs`."""
    if len(runs) == 1:
        return runs[0]
    merged = dict(runs[0])
    for key in RATES:
        values = [r[key] for r in runs]
        merged[key] = round(statistics.mean(values), 1) if None not in values else None
    merged["runs"] = [{k: r[k] for k in RATES} for r in runs]
    return merged


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "text2sql-smollm2.yaml"))
    parser.add_argument("--steps", type=int, default=40,
                        help="optimizer steps of the row-batched recipes (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--peak-seconds", type=float, default=1.5, help="seconds per peak measurement")
    parser.add_argument("--recipes", default="plain_hf,loratune,plain_hf",
                        help="comma-separated, run in this order: original, plain_hf, loratune (a name given "
                             "twice runs twice and counts as the mean of its runs; default: %(default)s)")
    parser.add_argument("--compile", default="true", choices=["auto", "true", "false"],
                        help="train.compile of the loratune recipe (default: %(default)s; auto: on from 150 "
                             "steps, see loratune/training/compilation.py)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every recipe, e.g. --set model=/path/to/model")
    args = parser.parse_args()
    names = args.recipes.split(",")
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:  # before the minutes of peak, model and row loading
        parser.error(f"--recipes: unknown {', '.join(unknown)} (known: {', '.join(RECIPES)})")
    rows = args.steps * args.batch_size
    bf16 = bf16_supported(DEVICE)
    peaks = Peaks(["fp32", "bf16"] if bf16 else ["fp32"], args.peak_seconds)
    peaks.measure()

    out = tempfile.mkdtemp(prefix="loratune-bench-")
    cfg = load_config(args.config, args.set + [f"data.max_train_rows={rows}"])
    features = bench_features(cfg)
    fpt = flop_per_token(cfg, features)
    # Measured before any recipe runs: while a LoRA model that has run forward and backward is alive
    # in this process, the same bf16 matmuls ran ~20% slower (not explained; 2-core Intel Xeon with AMX,
    # 2026-11-26, commit de337d6, docs/log.md), and a bound should not be lowered by that.
    gemm_gflops = {p: gemm_only_gflops(cfg, features, args.batch_size, torch.bfloat16 if p == "bf16" else torch.float32)
                   for p in peaks.samples}
    # Every recipe trains these rows once: `rows` rows, `steps` batches of `batch_size` rows.
    common = args.set + [
        f"data.max_train_rows={rows}", "train.epochs=1", "train.max_steps=-1",
        f"train.batch_size={args.batch_size}", "train.grad_accum=1", "train.eval_loss_rows=8",
        f"train.eval_steps={10 * rows}", "train.logging_steps=1", f"train.seed={cfg.train.seed}",
    ]
    defaults_lora, defaults_train = LoraSettings(), TrainSettings()
    weights = "bf16" if bf16 else "fp32"
    recipes = {  # each takes the run's own output directory
        "original": lambda run_out: run_loratune_path(args.config, common + [
            f"output_dir={run_out}", "name=original", "lora.dropout=0.05", "train.pad_to_max_length=true", "train.group_by_length=false",
            "train.completion_only_logits=false", f"train.weights_dtype={weights}", f"train.precision={weights}",
            "train.compile=false",
        ]),
        "plain_hf": lambda run_out: run_plain_hf(cfg, features, args.batch_size, run_out + "/plain_hf"),
        "loratune": lambda run_out: run_loratune_path(args.config, common + [
            f"output_dir={run_out}", "name=loratune", f"lora.dropout={defaults_lora.dropout}",
            f"train.weights_dtype={defaults_train.weights_dtype}", f"train.compile={args.compile}",
        ]),
    }
    runs: dict[str, list[dict[str, Any]]] = {}
    for i, name in enumerate(names):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        runs.setdefault(name, []).append(recipes[name](f"{out}/{i}"))
        peaks.measure()
    results = {name: mean_of_runs(r) for name, r in runs.items()}
    peak = peaks.gflops()
    ceiling = {p: round(g / peak[p], 3) for p, g in gemm_gflops.items()}
    for r in results.values():
        r["mfu"] = round(r["tokens_per_s"] * fpt / (peak[r["precision"]] * 1e9), 3)
        after = r["tokens_per_s_after_first_step"]
        r["mfu_after_first_step"] = round(after * fpt / (peak[r["precision"]] * 1e9), 3) if after else None

    print(f"\nModel {cfg.model}, task {cfg.task}, {rows} rows ({len(features)} after length limits), "
          f"native bf16: {bf16}, device {torch.cuda.get_device_name() if DEVICE == 'cuda' else 'cpu'}, "
          f"threads {torch.get_num_threads()}")
    print(f"matmul peak ({PEAK_SIZE}²): " + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peak.items())
          + f"; {fpt / 1e9:.3f} GFLOP per useful token")
    print("MFU of the step's matmuls alone, at the model's shapes (a bound on any recipe's MFU): "
          + ", ".join(f"{p} {c:.3f}" for p, c in ceiling.items()) + "\n")
    base = results.get("plain_hf") or next(iter(results.values()))
    print("| recipe | precision | compiled | steps | useful tokens | useful tok/s | MFU | vs plain_hf "
          "| after the first step: tok/s | MFU | vs plain_hf |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        after, base_after = r["tokens_per_s_after_first_step"], base["tokens_per_s_after_first_step"]
        print(f"| {name} | {r['precision']} | {r['compiled']} | {r['steps']} | {r['tokens']:,} | {r['tokens_per_s']:.1f} | "
              f"{r['mfu']:.3f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}x | "
              + (f"{after:.1f} | {r['mfu_after_first_step']:.3f} | "
                 + (f"{after / base_after:.2f}x |" if base_after else "- |") if after else "- | - | - |"))
    if args.json:
        keys = ("tokens_per_s", "precision", "mfu", "compiled", "tokens_per_s_after_first_step", "mfu_after_first_step",
                "runs")
        report = {"peak_gflops": peak, "flop_per_token": round(fpt), "gemm_only_mfu": ceiling,
                  "recipes": {n: {k: r[k] for k in keys if k in r} for n, r in results.items()}}
        print(json.dumps(report))


if __name__ == "__main__":
    main()
