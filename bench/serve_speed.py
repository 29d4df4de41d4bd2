"""Serving throughput and latency: 1, 4 and 8 concurrent clients split across two adapters,
against sequential single-request decoding on the same model, measured in one run.

Also, in the same process: single-request decoding before this version (`generate` on fp32
weights under bf16 autocast, the LoRA adapter unmerged: what `loratune chat` ran) against the
serving decode loop, and the bound set by reading the weights once per token (the time to sum
every weight the decode step reads, best of several reads).

The model is the built-in smollm2-135m-instruct when it is pulled (~/.cache/loratune), else
the tiny test Llama. Two adapters with small random LoRA weights stand in for trained ones
(speed does not depend on what the weights learned). Every request is greedy with the same
max_tokens; the server's answers are checked against the sequential ones, so the rows compare
the same work. Prints a markdown table.

    .venv/bin/python bench/serve_speed.py [--requests 16] [--max-tokens 48] [--model NAME_OR_DIR] [--threads N] [--json]

`--json` prints, as its last line, {"sequential_tokens_per_s", "concurrent": {"1"|"4"|"8": {"tokens_per_s",
"p50_latency_s"}}, "answers_equal_fraction", "single_request": {...}}.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What is a bond?", "Why do stock prices fall when interest rates rise?", "What is a dividend?",
    "Explain compound interest in one sentence.", "What does an index fund hold?",
    "How many singers are older than 30? CREATE TABLE singer (name TEXT, age INTEGER)",
    "List the names of red ships. CREATE TABLE ship (name TEXT, color TEXT)",
    "What is the average salary per department? CREATE TABLE emp (name TEXT, dept TEXT, salary REAL)",
    "What is inflation?", "What is a credit score used for?", "What is a mutual fund?",
    "Count the orders placed in 2020. CREATE TABLE orders (id INTEGER, placed DATE)",
    "What is liquidity?",
    "Which cities have more than 1 million people? CREATE TABLE city (name TEXT, population INTEGER)",
    "What is a stock split?", "What is the difference between a Roth IRA and a traditional IRA?",
]


def pick_model(requested: str | None, workdir: Path) -> str:
    from loratune.models import builtin

    if requested:
        return requested
    if builtin.cached_model_path("smollm2-135m-instruct") is not None:
        return "smollm2-135m-instruct"
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import build_tiny_llama

    return str(build_tiny_llama(workdir / "tiny-llama"))


def make_adapter(base: str, run_dir: Path, task: str, seed: int) -> Path:
    """Random LoRA weights scaled down so answers stay fluent but differ per adapter."""
    from peft import LoraConfig, TaskType, get_peft_model

    from loratune.models.load import load_model
    from loratune.models.lora import default_target_modules

    loaded = load_model(base)
    torch.manual_seed(seed)
    model = get_peft_model(loaded.model, LoraConfig(
        r=8, lora_alpha=16, target_modules=default_target_modules(loaded.model), init_lora_weights=False,
        task_type=TaskType.CAUSAL_LM if loaded.model_type == "causal" else TaskType.SEQ_2_SEQ_LM))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.02)
    adapter_dir = run_dir / "adapter"
    model.save_pretrained(str(adapter_dir))
    meta = {"name": run_dir.name, "task": task, "base_model": base, "base_path": loaded.path, "model_type": loaded.model_type,
            "use_chat_template": None, "system_prompt": None, "max_source_tokens": 512, "max_target_tokens": 256}
    (adapter_dir / "loratune.json").write_text(json.dumps(meta), encoding="utf-8")
    return run_dir


def workload(n: int) -> list[tuple[str, str]]:
    """(adapter, message) pairs alternating between the two adapters."""
    return [("sql" if i % 2 == 0 else "fin", QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]


Measured = tuple[list[float], int, float, list[str]]
"""(latencies, generated tokens, wall seconds, answers)."""


def sequential_baseline(registry, requests: list[tuple[str, str]], max_tokens: int) -> Measured:
    """One request at a time through the serving decode loop (no HTTP): single-request decoding."""
    from loratune.inference.answers import clean_output
    from loratune.inference.jobs import Job
    from loratune.serve.prompts import build_chat_prompt

    latencies, tokens, answers = [], 0, []
    started = time.perf_counter()
    for name, message in requests:
        built = build_chat_prompt(registry.profile(name), registry.tokenizer, registry.model_type,
                                  [{"role": "user", "content": message}])
        job = Job(name, built.ids, max_tokens=max_tokens, strip=True)
        t0 = time.perf_counter()
        registry.run_jobs([job])
        latencies.append(time.perf_counter() - t0)
        tokens += job.completion_tokens
        answers.append(clean_output(job.text, built.task_family))
    return latencies, tokens, time.perf_counter() - started, answers


def compare_single_request(base: str, adapters: dict[str, Path], registry, requests: list[tuple[str, str]],
                           max_tokens: int) -> tuple[float, float]:
    """Single-request decoding before this version and now, request by request in turn (so load
    that comes and goes on a shared machine hits both alike). Returns (before, now) in tokens/s.

    Before: `generate` on a fresh fp32 model, LoRA unmerged, under bf16 autocast where bf16 is
    native, which is what chat and a lone client ran. Now: the serving decode loop.
    """
    from peft import PeftModel

    from loratune.config import GenerationSettings
    from loratune.inference.encoding import encode_batch, generation_kwargs
    from loratune.models.load import load_model
    from loratune.models.precision import autocast_context
    from loratune.serve.prompts import build_chat_prompt

    loaded = load_model(base)
    (first, first_dir), *others = adapters.items()
    model = PeftModel.from_pretrained(loaded.model, str(first_dir / "adapter"), adapter_name=first)
    for name, run_dir in others:
        model.load_adapter(str(run_dir / "adapter"), adapter_name=name)
    model.eval()
    kwargs = generation_kwargs(GenerationSettings(max_new_tokens=max_tokens), loaded.tokenizer)
    totals = {"before": [0, 0.0], "now": [0, 0.0]}
    for name, message in requests:
        built = build_chat_prompt(registry.profile(name), registry.tokenizer, registry.model_type,
                                  [{"role": "user", "content": message}])
        model.set_adapter(name)
        inputs = encode_batch(loaded.tokenizer, loaded.model_type, [built.ids])
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast_context(model):
            out = model.generate(**inputs, **kwargs)
        ids = out[0, inputs["input_ids"].shape[1]:].tolist() if loaded.model_type == "causal" else out[0, 1:].tolist()
        if loaded.tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(loaded.tokenizer.eos_token_id) + 1]
        totals["before"][0] += len(ids)
        totals["before"][1] += time.perf_counter() - t0
        _, tokens, seconds, _ = sequential_baseline(registry, [(name, message)], max_tokens)
        totals["now"][0] += tokens
        totals["now"][1] += seconds
    return totals["before"][0] / totals["before"][1], totals["now"][0] / totals["now"][1]


def weight_read_bound(model) -> tuple[float, float]:
    """(GB the decode step reads, tokens/s if reading them once were all a token cost).

    Every Linear weight (LoRA's included) and one embedding row per token; the read time is the
    best of several `sum`s over those tensors, a memory-bound pass at this machine's bandwidth.
    """
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    size = sum(w.numel() * w.element_size() for w in weights)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(5):
            t0 = time.perf_counter()
            for w in weights:
                w.sum(dtype=torch.float32)
            best = min(best, time.perf_counter() - t0)
    return size / 1e9, 1.0 / best


def run_clients(url: str, requests: list[tuple[str, str]], clients: int, max_tokens: int) -> Measured:
    """`clients` threads share the request list; each sends its next request when the last is answered."""
    pending = list(enumerate(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    answers: list[str] = [""] * len(requests)
    tokens = [0]

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            while True:
                with lock:
                    if not pending:
                        return
                    index, (name, message) = pending.pop(0)
                t0 = time.perf_counter()
                body = http.post("/v1/chat/completions", json={
                    "model": name, "messages": [{"role": "user", "content": message}],
                    "max_tokens": max_tokens, "temperature": 0}).raise_for_status().json()
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    tokens[0] += body["usage"]["completion_tokens"]
                    answers[index] = body["choices"][0]["message"]["content"]

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, tokens[0], time.perf_counter() - started, answers


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=16, help="requests per row")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--model", default=None, help="default: smollm2-135m-instruct if pulled, else the tiny Llama")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (on a busy machine 1 avoids threads spinning against each other)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    sys.path.insert(0, str(ROOT / "tests"))
    from serve_helpers import BackgroundServer  # the tests' uvicorn-in-a-thread helper

    from loratune.serve.app import ServeSettings, create_app
    from loratune.serve.cpu_threads import release_openmp_threads
    from loratune.serve.registry import open_registry

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = pick_model(args.model, work)
        adapters = {"sql": make_adapter(base, work / "sql", "sql-create-context", seed=1),
                    "fin": make_adapter(base, work / "fin", "finance-alpaca", seed=2)}
        registry = open_registry(base, [f"{name}={run}" for name, run in adapters.items()])
        requests = workload(args.requests)
        device = next(registry.model.parameters()).device
        precision = "bf16 Linear weights under bf16 autocast" if registry.bf16 else "fp32"
        print(f"model {base} ({registry.model_type}, {device}, {precision}, torch threads {torch.get_num_threads()}); "
              f"{args.requests} requests per row, greedy, max_tokens {args.max_tokens}, two adapters\n", flush=True)

        # Single-request decoding before and after, on the same requests, in this process.
        compare_single_request(base, adapters, registry, requests[:2], 4)  # warm-up
        old_rate, new_rate = compare_single_request(base, adapters, registry, requests[: max(4, args.requests // 2)],
                                                    args.max_tokens)
        rows = []
        lat, tok, wall, reference = sequential_baseline(registry, requests, args.max_tokens)
        rows.append(("sequential decoding (no server)", 1, lat, tok, wall, 1.0))
        gigabytes, bound = weight_read_bound(registry.model)
        # `loratune serve` loads on the thread that starts the worker, which frees its CPU threads
        # then (serve/cpu_threads.py); here the sequential rows above ran on this thread instead.
        release_openmp_threads()
        app = create_app(registry, ServeSettings(max_batch_size=8, queue_size=64))
        with BackgroundServer(app) as server:
            run_clients(server.url, requests[:2], 2, 4)  # warm-up
            for clients in (1, 4, 8):
                batches_before = app.state.scheduler.batches
                lat, tok, wall, answers = run_clients(server.url, requests, clients, args.max_tokens)
                batches = app.state.scheduler.batches - batches_before
                same = sum(a == b for a, b in zip(answers, reference)) / len(reference)
                rows.append((f"server, {clients} client{'s' if clients > 1 else ''} ({batches} prefills)",
                             clients, lat, tok, wall, same))

    base_rate = rows[0][3] / rows[0][4]
    print("| mode | clients | generated tokens | wall s | tokens/s | vs sequential "
          "| p50 latency s | p95 latency s | same answers |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, clients, lat, tok, wall, same in rows:
        rate = tok / wall
        print(f"| {mode} | {clients} | {tok} | {wall:.1f} | {rate:.1f} | {rate / base_rate:.2f}x | "
              f"{statistics.median(lat):.2f} | {percentile(lat, 95):.2f} | {same:.0%} |")
    print(f"\nsingle-request decoding, request by request in turn: before {old_rate:.1f} tok/s (generate, fp32 "
          f"weights, autocast, LoRA unmerged), now {new_rate:.1f} tok/s ({new_rate / old_rate:.2f}x); reading the "
          f"{gigabytes:.2f} GB of weights once per token bounds it at {bound:.1f} tok/s: decoding reaches "
          f"{new_rate / bound:.0%} of that bound")
    if args.json:
        concurrent = {str(clients): {"tokens_per_s": round(tok / wall, 2),
                                     "p50_latency_s": round(statistics.median(lat), 3)}
                      for _, clients, lat, tok, wall, _ in rows[1:]}
        print(json.dumps({
            "sequential_tokens_per_s": round(base_rate, 2), "concurrent": concurrent,
            "answers_equal_fraction": round(statistics.mean(same for *_, same in rows[1:]), 3),
            "single_request": {"before_tokens_per_s": round(old_rate, 2), "after_tokens_per_s": round(new_rate, 2),
                               "speedup": round(new_rate / old_rate, 2),
                               "weight_read_bound_tokens_per_s": round(bound, 1)},
        }))


if __name__ == "__main__":
    main()
