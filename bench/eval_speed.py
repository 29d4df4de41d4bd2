"""Evaluation generation speed: loratune's evaluation against the way it generated before, in one process.

Both recipes generate greedy answers for the same eval rows, base model and LoRA model, with the
same batches (longest prompts first), the same stopping rule (SQL stops at `;`) and the same
max_new_tokens; only how the model computes differs:

  before    what `loratune eval` ran before commit faa8126 (2026-11-25): fp32 weights under bf16
            autocast (where bf16 is native), so every matmul re-casts its weight at every decode
            step, and the LoRA side as an unmerged peft model (two extra small matmuls per adapted
            layer and token);
  static    what it ran from commit faa8126 until continuous batching (commit 4dfcfcc,
            2026-11-25): bf16 copies of the Linear weights made once per call where bf16 is
            native, the adapter merged into the base weights, fixed batches through
            `model.generate` (`loratune.inference.generate._generate_static`);
  loratune  `loratune.inference.generate.generate_texts`: the same weights, decoded by the decode
            engine with continuous batching (finished rows leave the batch, the next prompts join
            it), as evaluation does (`loratune.evaluation.base_vs_lora`).

Reports seconds per side, generated tokens/s (the cleaned answers re-tokenized, +1 for the stop
token: the same count for both recipes, not the exact decode steps), the speed-up, and the share of answers that are
identical between the recipes (bf16 rounding may flip near-ties). Needs a trained run.

The defaults are the command behind the table in docs/benchmarks.md: the 15-minute recipe's run
(`runs/text2sql-cpu-15min`, made by `loratune run configs/text2sql-cpu-15min.yaml`), its 115 eval
rows.

    .venv/bin/python bench/eval_speed.py [--run runs/text2sql-cpu-15min] [--rows 115] [--eval FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from loratune.data import eval_prompts, load_splits  # noqa: E402
from loratune.evaluation.base_vs_lora import load_run_config  # noqa: E402
from loratune.inference.answers import clean_output
from loratune.inference.encoding import encode_batch, generation_kwargs
from loratune.inference.generate import _generate_static, generate_texts
from loratune.models.load import load_model  # noqa: E402
from loratune.models.precision import (
    autocast_context,
    bf16_supported,  # noqa: E402
    generation_precision,
)
from loratune.tasks import get_task  # noqa: E402


def generate_before(model: Any, tokenizer: Any, model_type: str, prompts: list[str], settings: Any,
                    batch_size: int, task_family: str) -> list[str]:
    """The generation loop as it was: autocast over fp32 weights, whatever model it is given."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    kwargs = generation_kwargs(settings, tokenizer)
    if task_family == "sql":
        kwargs.update(stop_strings=[";"], tokenizer=tokenizer)
    outputs = [""] * len(prompts)
    model.eval()
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        inputs = encode_batch(tokenizer, model_type, [prompts[i] for i in batch], "cpu")
        with torch.no_grad(), autocast_context(model):
            generated = model.generate(**inputs, **kwargs)[:, inputs["input_ids"].shape[1]:]
        for index, row in zip(batch, generated):
            outputs[index] = clean_output(tokenizer.decode(row, skip_special_tokens=True), task_family)
    return outputs


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def count_tokens(tokenizer: Any, texts: list[str]) -> int:
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)


def main() -> None:
    from peft import PeftModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "text2sql-cpu-15min"),
                        help="a trained run directory (default: the 15-minute recipe's)")
    parser.add_argument("--rows", type=int, default=115)
    parser.add_argument("--eval", default=None, help="another eval file (e.g. data/sql-create-context/val.jsonl)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    run = Path(args.run)
    cfg = load_run_config(run, [f"data.eval={args.eval}"] if args.eval else [])
    task = get_task(cfg.task)
    _, rows = load_splits(cfg.data, task, cfg.train.seed)
    rows = rows[: args.rows]
    loaded = load_model(cfg.model)
    tokenizer, model_type = loaded.tokenizer, loaded.model_type
    prompts = eval_prompts(rows, task, tokenizer, model_type, cfg.data)
    settings, batch = cfg.eval.generation, cfg.eval.batch_size

    def now(model: Any) -> list[str]:
        return generate_texts(model, tokenizer, model_type, prompts, settings, batch_size=batch, task_family=task.family)

    def static(model: Any) -> list[str]:
        with torch.inference_mode(), generation_precision(model):
            return _generate_static(model.eval(), tokenizer, model_type, prompts, settings, batch, task.family,
                                    None, None)

    def before(model: Any) -> list[str]:
        return generate_before(model, tokenizer, model_type, prompts, settings, batch, task.family)

    results: dict[str, dict[str, float]] = {}
    answers: dict[str, list[str]] = {}
    # Base side: the same model object for both recipes.
    answers["before/base"], results.setdefault("before", {})["base_s"] = timed(lambda: before(loaded.model))
    answers["static/base"], results.setdefault("static", {})["base_s"] = timed(lambda: static(loaded.model))
    answers["loratune/base"], results.setdefault("loratune", {})["base_s"] = timed(lambda: now(loaded.model))
    # LoRA side: unmerged for `before`, then merged (as evaluation does: loratune.evaluation.base_vs_lora) for loratune.
    peft_model = PeftModel.from_pretrained(loaded.model, str(run / "adapter"))
    answers["before/lora"], results["before"]["lora_s"] = timed(lambda: before(peft_model))
    merged = peft_model.merge_and_unload()
    answers["static/lora"], results["static"]["lora_s"] = timed(lambda: static(merged))
    answers["loratune/lora"], results["loratune"]["lora_s"] = timed(lambda: now(merged))

    for name, r in results.items():
        r["total_s"] = r["base_s"] + r["lora_s"]
        tokens = count_tokens(tokenizer, answers[f"{name}/base"] + answers[f"{name}/lora"])
        r["tokens_per_s"] = tokens / r["total_s"]
    speedup = results["before"]["total_s"] / results["loratune"]["total_s"]
    same = sum(
        a == b for side in ("base", "lora") for a, b in zip(answers[f"before/{side}"], answers[f"loratune/{side}"])
    ) / (2 * len(prompts))

    print(f"\n{run.name}: {len(prompts)} eval rows, base + LoRA, batch {batch}, native bf16: {bf16_supported('cpu')}, "
          f"threads {torch.get_num_threads()}")
    print("| recipe | base side s | LoRA side s | total s | generated tok/s | vs before |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['base_s']:.1f} | {r['lora_s']:.1f} | {r['total_s']:.1f} | {r['tokens_per_s']:.1f} | "
              f"{results['before']['total_s'] / r['total_s']:.2f}x |")
    static_same = sum(
        a == b for side in ("base", "lora") for a, b in zip(answers[f"static/{side}"], answers[f"loratune/{side}"])
    ) / (2 * len(prompts))
    print(f"answers identical between before and loratune: {same:.1%}; between static and loratune: {static_same:.1%}")
    if args.json:
        print(json.dumps({"rows": len(prompts), "recipes": {n: {k: round(v, 2) for k, v in r.items()}
                                                            for n, r in results.items()},
                          "speedup": round(speedup, 2), "answers_equal_fraction": round(same, 3),
                          "answers_equal_fraction_vs_static": round(static_same, 3)}))


if __name__ == "__main__":
    main()
