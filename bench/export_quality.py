"""What exporting costs an adapter: SQL execution accuracy of the merged model in loratune against each
GGUF type run in llama.cpp itself, with file size and tokens/s at batch 1, measured in one run.

The run's shipped eval rows (115 for the SQL configs) are rendered as evaluation renders them; every
answer is greedy with the run's max_new_tokens. loratune decodes one prompt at a time with its own
engine (`generate_texts`, batch 1), llama.cpp with 2 threads (`export/llama_runtime.py`). tokens/s
counts answer tokens over the time from the prompt to the last token (llama.cpp's model load is not
counted; loratune's model is loaded before the clock starts). Prints one markdown table.

    .venv/bin/python bench/export_quality.py [--run runs/text2sql-cpu-15min] [--limit 115]
        [--types f32,f16,q8_0,q5_k_m,q4_k_m,q4_0] [--threads 2] [--out bench/out/export_quality]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from loratune.config import load_config
from loratune.data import eval_prompts, read_rows
from loratune.export.gguf import export_run
from loratune.export.llama_runtime import complete
from loratune.inference.answers import clean_output
from loratune.inference.generate import generate_texts
from loratune.models.lora import merge_adapter
from loratune.sql.judge import judge_sql
from loratune.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


def score(cfg, rows: list[dict], answers: list[str]) -> dict:
    """Execution accuracy (synthesized databases) and on the real databases where rows have one."""
    sql = cfg.eval.sql
    judgement = judge_sql([r["answer"] for r in rows], answers, [r["context"] for r in rows],
                          db_ids=[r.get("db_id") for r in rows],
                          db_dir=str(ROOT / sql.databases) if sql.databases else None,
                          num_dbs=sql.num_dbs, timeout_s=sql.timeout_s)
    return judgement.as_dict()


def loratune_answers(merged: Path, prompts: list[str], settings, family: str, threads: int) -> tuple[list[str], float]:
    """(answers, answer tokens per second) of the merged model in loratune, one prompt at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    started = time.perf_counter()
    texts = generate_texts(model, tokenizer, "llama", prompts, settings, batch_size=1)
    seconds = time.perf_counter() - started
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return [clean_output(t, family) for t in texts], tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/text2sql-cpu-15min")
    parser.add_argument("--limit", type=int, default=115)
    parser.add_argument("--types", default="f32,f16,q8_0,q5_k_m,q4_k_m,q4_0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/out/export_quality")
    args = parser.parse_args()

    run, out = ROOT / args.run, ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(run / "config.yaml", [])
    task = get_task(cfg.task)
    rows = read_rows(str(ROOT / cfg.data.eval))[: args.limit]
    merged = out / "merged"
    if not merged.exists():
        merge_adapter(run, merged)
    from transformers import AutoTokenizer

    prompts = eval_prompts(rows, task, AutoTokenizer.from_pretrained(merged), "llama", cfg.data)
    settings = cfg.eval.generation
    answers, speed = loratune_answers(merged, prompts, settings, task.family, args.threads)
    table = [("merged, loratune", score(cfg, rows, answers), None, speed)]
    for outtype in args.types.split(","):
        path = out / outtype / "model.gguf"
        if not path.exists():
            export_run(run, path, outtype=outtype)
        got = complete(path, prompts, max_tokens=settings.max_new_tokens, threads=args.threads, context_size=2048)
        speed = sum(len(c.tokens) for c in got) / sum(c.seconds for c in got)
        table.append((f"{outtype}, llama.cpp", score(cfg, rows, [clean_output(c.text, task.family) for c in got]),
                      path.stat().st_size, speed))
        same = sum(clean_output(c.text, task.family) == a for c, a in zip(got, answers))
        print(f"{outtype}: {same}/{len(rows)} answers the same as loratune's", flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    print(f"\n{time.strftime('%Y-%m-%d')} · {platform.processor() or platform.machine()} · commit {commit} · "
          f"{args.run}, {len(rows)} rows, {args.threads} threads\n")
    base = table[0][1]["execution_accuracy"]
    print("| model | execution accuracy | vs merged | real-DB accuracy | file size | tokens/s (batch 1) |")
    print("|---|---|---|---|---|---|")
    for name, scores, size, speed in table:
        real = scores["execution_accuracy_real_db"]
        print(f"| {name} | {scores['execution_accuracy']:.1%} | {100 * (scores['execution_accuracy'] - base):+.1f} pts "
              f"| {'-' if real is None else f'{real:.1%}'} | {'-' if size is None else f'{size / 1e6:.0f} MB'} "
              f"| {speed:.1f} |")
    (out / "results.json").write_text(json.dumps([{"model": n, **s, "bytes": z, "tokens_per_s": v}
                                                  for n, s, z, v in table], indent=2))


if __name__ == "__main__":
    main()
