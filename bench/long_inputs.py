"""Training speed and memory on long inputs: useful tokens/s and peak memory at 512, 1,024, 2,048 and
4,096 tokens per row, loratune vs `plain_hf`, in one process.

The rows are ECTSum earnings-call transcripts (../shared/data/ectsum/train.jsonl, read from the
path, never shipped: GPL-3.0) as prompt -> summary pairs, each prompt cut to the length under test,
so every row of a length is that long (the transcripts whose prompt is shorter are skipped). Each
length trains `--steps` optimizer steps of `--batch-size` rows with each recipe, in the order
`--recipes` gives (default `plain_hf,loratune`: both see the same rows):

  plain_hf  transformers' Trainer + peft with their defaults (bench/train_speed.py's recipe):
            the model's own loss over every position, SDPA attention, LoRA dropout 0.05;
  loratune  loratune's own `train_run` with its defaults: the vocabulary projection only over the
            answer (`train.completion_only_logits`), the attention `training/attention.py` picks
            for the width, no dropout; `train.compile` off (`--compile`), since a few steps cannot
            pay a compile back.

Useful tokens/s counts each row's tokens over the wall time of its recipe's steps after the first
(the first step pays one-time costs). Peak memory is the process's resident set above what it held
before the recipe started, sampled every 20 ms on CPU (`torch.cuda.max_memory_allocated` on a GPU):
what a user needs free on top of the loaded model. On CPU the bench runs with glibc's
`MALLOC_MMAP_THRESHOLD_` fixed at 128 KiB (it re-executes itself with it), so every large buffer is
its own mapping, returned to the system when freed: otherwise glibc raises the threshold after the
first recipe frees its buffers, keeps the freed memory in its heap, and the next recipe's peak reads
low (without it, loratune after plain_hf read 0.54 GB at every length).

The defaults are the command behind the table in docs/benchmarks.md:

    .venv/bin/python bench/long_inputs.py [--lengths 512,1024,2048,4096] [--steps 4] [--batch-size 1]
        [--recipes plain_hf,loratune] [--compile false] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from train_speed import DEVICE, run_loratune_path, run_plain_hf  # noqa: E402

from loratune.config import load_config  # noqa: E402
from loratune.json_files import read_jsonl  # noqa: E402
from loratune.models.load import load_model  # noqa: E402
from loratune.training.attention import attention_for  # noqa: E402

ECTSUM = ROOT.parent / "shared" / "data" / "ectsum" / "train.jsonl"
INSTRUCTION = "Summarize the results and outlook of this earnings call in a few one-line bullets."
TARGET_TOKENS = 128


class PeakMemory:
    """The largest resident set (CPU) or allocated memory (CUDA) while the block runs, above the start."""

    def __enter__(self) -> PeakMemory:
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self.peak = self._rss()
            self._running = True
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    @staticmethod
    def _rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.02)

    def __exit__(self, *_exc: Any) -> None:
        if DEVICE == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._running = False
            self._thread.join()

    @property
    def gb(self) -> float:
        return round((self.peak - self.start) / 1e9, 2)


def long_rows(tokenizer: Any, length: int, count: int) -> list[dict[str, str]]:
    """`count` prompt/completion rows whose prompt is cut to exactly `length` tokens."""
    if not ECTSUM.is_file():
        raise SystemExit(f"{ECTSUM}: missing (ECTSum's train split; see data/README.md for where to get it)")
    rows = []
    for row in read_jsonl(ECTSUM):
        ids = tokenizer(f"{INSTRUCTION}\nTranscript:\n{row['document']}", add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            rows.append({"prompt": tokenizer.decode(ids[:length]), "completion": row["summary"]})
        if len(rows) == count:
            return rows
    raise SystemExit(f"{ECTSUM}: only {len(rows)} transcripts reach {length} tokens; need {count}")


def write_rows(rows: list[dict[str, str]], folder: Path) -> Path:
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def measure(length: int, args: argparse.Namespace, tokenizer: Any, out: Path) -> dict[str, Any]:
    rows = args.steps * args.batch_size
    data = write_rows(long_rows(tokenizer, length, rows + 4), out)
    common = [
        "task=prompt-completion", f"data.train={data}", f"data.eval={data}",
        f"data.max_train_rows={rows}", "data.max_eval_rows=1", f"data.max_source_tokens={length + 32}",
        f"data.max_target_tokens={TARGET_TOKENS}", "data.use_chat_template=false", "train.epochs=1",
        "train.max_steps=-1", "train.max_minutes=null", f"train.batch_size={args.batch_size}", "train.grad_accum=1",
        "train.eval_loss_rows=1", f"train.eval_steps={10 * rows}", "train.logging_steps=1", "eval.progress_rows=null",
    ]
    cfg = load_config(args.config, common)
    from loratune.data import load_splits, tokenize_rows
    from loratune.tasks import get_task

    task = get_task(cfg.task)
    train_rows, _ = load_splits(cfg.data, task, cfg.train.seed)
    features, _ = tokenize_rows(train_rows, task, tokenizer, "causal", cfg.data)
    result: dict[str, Any] = {"length": length, "row_tokens": round(sum(len(f["input_ids"]) for f in features) / len(features)),
                              "attention": attention_for(DEVICE, length)}
    for i, name in enumerate(args.recipes.split(",")):
        print(f"{length} tokens: {name} ...", file=sys.stderr, flush=True)
        gc.collect()
        with PeakMemory() as memory:
            if name == "plain_hf":
                run = run_plain_hf(cfg, features, args.batch_size, str(out / f"{i}-plain_hf"))
            else:
                run = run_loratune_path(args.config, common + [f"output_dir={out / str(i)}", "name=loratune",
                                                              f"train.compile={args.compile}"])
        result[name] = {"tokens_per_s": run["tokens_per_s_after_first_step"] or run["tokens_per_s"],
                        "peak_memory_gb": memory.gb, "precision": run["precision"]}
    return result


def fixed_mmap_threshold() -> None:
    """Re-execute this script with glibc's mmap threshold fixed (see the module doc), once."""
    if DEVICE == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "ectsum-cpu-15min.yaml"))
    parser.add_argument("--lengths", default="512,1024,2048,4096")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per recipe and length")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--recipes", default="plain_hf,loratune")
    parser.add_argument("--compile", default="false", choices=["auto", "true", "false"])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    fixed_mmap_threshold()  # after parsing: a bad option or --help fails before the re-execution
    unknown = set(args.recipes.split(",")) - {"plain_hf", "loratune"}
    if unknown:
        parser.error(f"--recipes: unknown {', '.join(sorted(unknown))} (known: plain_hf, loratune)")
    lengths = [int(x) for x in args.lengths.split(",")]
    tokenizer = load_model(load_config(args.config).model).tokenizer
    results = []
    for length in lengths:
        with tempfile.TemporaryDirectory(prefix="loratune-long-") as out:
            results.append(measure(length, args, tokenizer, Path(out)))
    print(f"\nModel {load_config(args.config).model}, {args.steps} steps x {args.batch_size} rows per length, "
          f"device {DEVICE}, threads {torch.get_num_threads()}, precision {results[0]['loratune']['precision']}")
    print("| tokens per row | attention (loratune) | plain_hf tok/s | loratune tok/s | loratune vs plain_hf "
          "| plain_hf peak GB | loratune peak GB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        p, lt = r["plain_hf"], r["loratune"]
        print(f"| {r['row_tokens']:,} | {r['attention']} | {p['tokens_per_s']:.1f} | {lt['tokens_per_s']:.1f} | "
              f"{lt['tokens_per_s'] / p['tokens_per_s']:.2f}x | {p['peak_memory_gb']:.2f} | {lt['peak_memory_gb']:.2f} |")
    if args.json:
        print(json.dumps({"lengths": results}))


if __name__ == "__main__":
    main()
