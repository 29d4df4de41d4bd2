"""The CUDA path end to end, on a lent GPU: bf16, `batch_size: auto` (with and without memory
pressure) and QLoRA, through the CLI a user runs, then the training bench on the GPU.

No model weights can reach the GPU machine (no hub there), so the model is SmolLM2-135M's shape
and tokenizer with random weights (`--shape DIR` holds config.json and the tokenizer files, e.g.
~/.cache/loratune/models/smollm2-135m-instruct/hf without model.safetensors). Random weights
check the machinery (precision, memory, batch search, 4-bit loading, training, generation,
evaluation, report), not accuracy.

    python bench/cuda_check.py --shape .gpu/smollm2-shape --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from loratune.training.loss import CHUNK_ELEMENTS, DEVICE_CHUNK_ELEMENTS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "text2sql-smollm2.yaml"
T5_CONFIG = ROOT / "configs" / "finance-qa-flan-t5-large.yaml"  # the FLAN-T5 recipe
# Run one config through the CLI in this process's Python, optionally under a cap on CUDA memory:
# the cap makes the auto batch search meet real out-of-memory errors on an 80 GB card.
# LORATUNE_BENCH_TRAINER_SEARCH=1 turns off loratune's probes (loratune/training/batch_fit.py), so
# `batch_size: auto` is the Trainer's own search from 64 rows: the baseline they are measured against.
CAPPED = """
import os, sys, torch
fraction = float(sys.argv[1])
if fraction < 1:
    torch.cuda.set_per_process_memory_fraction(fraction)
if os.environ.get("LORATUNE_BENCH_TRAINER_SEARCH"):
    import loratune.training.batch_fit
    loratune.training.batch_fit.fit_batch_size = lambda *args, **kwargs: None
from loratune.cli import main
sys.argv = ["loratune"] + sys.argv[2:]
main()
"""


def random_model(shape: Path, out: Path) -> Path:
    """SmolLM2's config and tokenizer with seeded random weights, saved in bf16 as the hub's are."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(shape)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    for path in shape.iterdir():
        if path.name != "model.safetensors" and not (out / path.name).exists():
            shutil.copy(path, out / path.name)
    return out


def random_t5_large(out: Path) -> Path:
    """FLAN-T5-large's shape (24 + 24 layers, d_model 1024, gated-GELU, ~780M parameters) with seeded
    random bf16 weights and ByT5's byte tokenizer (vocabulary 384: no SentencePiece model can reach
    the GPU machine). Checks the FLAN-T5 recipe's machinery at its real size, not its accuracy."""
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    if (out / "config.json").is_file():  # built by an earlier run of this process
        return out
    torch.manual_seed(0)
    tokenizer = ByT5Tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=1024, d_kv=64, d_ff=2816, num_layers=24,
                      num_decoder_layers=24, num_heads=16, feed_forward_proj="gated-gelu",
                      tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def fused_loss_check(model_dir: Path, device: str = "cuda", batch: int = 16, width: int = 256,
                     answer: int = 96, repeats: int = 5, chunks: tuple[int, ...] = (DEVICE_CHUNK_ELEMENTS,)) -> dict:
    """The chunked vocabulary loss (loratune/training/loss.py) against the plain one on one LoRA model, under
    bf16 autocast as the Trainer runs it: loss, adapter gradients, peak memory and time per step,
    for each chunk size in `chunks` (elements of fp32 logits projected at a time)."""
    import loratune.training.loss as loss_module
    from loratune.config import LoraSettings
    from loratune.models.load import load_model
    from loratune.models.lora import apply_lora
    from loratune.training.loss import completion_loss_sum, fused_loss_supported

    torch.manual_seed(0)
    model = apply_lora(load_model(str(model_dir), device=device).model, "causal",
                       LoraSettings(r=16, alpha=32, dropout=0.0))
    for name, param in model.named_parameters():  # B starts at zero: give every adapter a gradient
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    assert fused_loss_supported(model)
    ids = torch.randint(0, model.config.vocab_size, (batch, width), device=device)
    labels = ids.clone()
    labels[:, :width - answer] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    params = [p for p in model.parameters() if p.requires_grad]
    result = {}
    variants = [("plain", None, None)] + [(f"fused_{c // 2**20}M", model, c) for c in chunks]
    times = {name: [] for name, _, _ in variants}
    peak = {}
    # Round-robin over the variants, repeat after repeat, so the host's drift (a launch-bound
    # 135M model on a GPU waits on the CPU) hits all of them alike; the median is reported.
    for _ in range(repeats):
        for name, fuse, chunk in variants:
            loss_module.DEVICE_CHUNK_ELEMENTS = loss_module.CHUNK_ELEMENTS = chunk or CHUNK_ELEMENTS
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16):
                loss, _, tokens = completion_loss_sum(model, inputs, fuse_head_of=fuse,
                                                      dtype=torch.bfloat16 if fuse is not None else None)
            grads = torch.autograd.grad(loss / tokens, params)
            if device == "cuda":
                torch.cuda.synchronize()
                peak[name] = torch.cuda.max_memory_allocated() / 1e9
            times[name].append(time.perf_counter() - started)
            result[name] = {"loss": float(loss.detach() / tokens), "grads": grads}
    loss_module.CHUNK_ELEMENTS, loss_module.DEVICE_CHUNK_ELEMENTS = CHUNK_ELEMENTS, DEVICE_CHUNK_ELEMENTS
    plain = result["plain"]
    worst = {k: max(float((f - p).norm() / p.norm().clamp_min(1e-12)) for f, p in zip(r["grads"], plain["grads"]))
             for k, r in result.items() if k != "plain"}
    return {"rows_x_tokens": [batch, width], "answer_tokens": batch * answer,
            "loss": {k: round(r["loss"], 5) for k, r in result.items()},
            "worst_grad_rel_diff": worst,
            "step_ms": {k: round(1000 * sorted(t)[len(t) // 2], 2) for k, t in times.items()},
            "peak_gb": {k: round(g, 3) for k, g in peak.items()}}


def run(name: str, sets: list[str], log: Path, fraction: float = 1.0, config: Path = CONFIG,
        verb: str = "run", trainer_search: bool = False) -> dict:
    """`loratune run` (or `train`) with `config` (the demo's by default) and `sets`; returns its
    summaries (training + eval). `trainer_search`: the Trainer's own batch search, not loratune's probes."""
    command = [sys.executable, "-c", CAPPED, str(fraction), verb, str(config), "--overwrite",
               "--set", f"name={name}", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, **({"LORATUNE_BENCH_TRAINER_SEARCH": "1"} if trainer_search else {})}
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n===== {name}: {' '.join(command[3:])}\n")
        out.flush()
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    result = {"name": name, "exit_code": code, "wall_s": round(time.perf_counter() - started, 1)}
    run_dir = ROOT / "runs" / name
    for key, file in (("train", "run_summary.json"), ("eval", "metrics.json")):
        if (run_dir / file).is_file():
            result[key] = json.loads((run_dir / file).read_text())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--fused-loss", action="store_true",
                        help="only compare the chunked vocabulary loss with the plain one on the GPU")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/cuda_check.py: no CUDA device here")
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "cuda_runs.log"
    model = random_model(args.shape, Path("/tmp/smollm2-random"))
    if args.fused_loss:
        for batch, answer in ((16, 96), (64, 130)):
            print(json.dumps(fused_loss_check(model, batch=batch, answer=answer, repeats=15, chunks=(2**22, 2**26))))
        return
    common = [f"model={model}", "train.max_minutes=null", f"train.max_steps={args.steps}"]
    capped = 2.0 / (torch.cuda.get_device_properties(0).total_memory / 1e9)
    # Time-budgeted: many epochs as the upper bound, so the budget (not the data) ends the run.
    budget = [f"model={model}", "train.epochs=50", "train.batch_size=auto"]
    runs = {
        # bf16 on the GPU, auto batch on a card with room to spare.
        "cuda-bf16-auto": (common + ["train.batch_size=auto"], 1.0),
        # auto batch under a ~2 GB cap: the search has to shrink the batch.
        "cuda-auto-capped": (common + ["train.batch_size=auto", "train.max_steps=10", "eval.limit=16"], capped),
        # train.max_minutes on a GPU: the steps are timed on the host while CUDA runs ahead.
        "cuda-budget": (budget + ["train.max_minutes=1", "eval.limit=32"], 1.0),
        # ...and with the batch search's out-of-memory retries before the first step.
        "cuda-budget-capped": (budget + ["train.max_minutes=0.5", "eval.limit=16"], capped),
        # QLoRA: 4-bit NF4 base weights (bitsandbytes), bf16 compute, fp32 adapters.
        "cuda-qlora": (common + ["train.load_in_4bit=true", "train.batch_size=16", "eval.limit=32"], 1.0),
        # the same batch in plain bf16, to set QLoRA's memory and speed beside
        "cuda-bf16-b16": (common + ["train.batch_size=16", "eval.limit=32"], 1.0),
        # `batch_size: auto`, loratune's probes against the Trainer's search from 64 rows (`-trainer`),
        # training only: SmolLM2 under the 2 GB cap, and the FLAN-T5 recipe's FLAN-T5-large shape
        # under 24 GB, as on a consumer card (1 step of 8 accumulated batches of 512-token rows).
        "search-2gb": (common + ["train.batch_size=auto", "train.max_steps=10"], capped, CONFIG, "train"),
        "search-2gb-trainer": (common + ["train.batch_size=auto", "train.max_steps=10"], capped, CONFIG, "train", True),
        # the probes with the decoder layers compiled (`train.compile: true` forced; `auto` leaves GPUs eager)
        "search-2gb-compile": (common + ["train.batch_size=auto", "train.max_steps=10", "train.compile=true"],
                               capped, CONFIG, "train"),
        "search-t5-24gb": (["model=T5", "data.train=data/finance-alpaca/sample.jsonl", "train.max_steps=1"],
                           capped * 12, T5_CONFIG, "train"),
        "search-t5-24gb-trainer": (["model=T5", "data.train=data/finance-alpaca/sample.jsonl", "train.max_steps=1"],
                                   capped * 12, T5_CONFIG, "train", True),
        # The FLAN-T5 recipe (FLAN-T5-large shape, r16 q/v/o, bias=all, bf16, grad-accum 8, auto batch)
        # on the shipped finance-alpaca sample: the seq2seq path at its real size. 3 steps: each is 8
        # batches of up to 64 rows x 512 tokens through a 780M model.
        "cuda-t5-large": (["model=T5", "data.train=data/finance-alpaca/sample.jsonl", "train.max_steps=3",
                           "eval.limit=16", "eval.generation.max_new_tokens=48"], 1.0, T5_CONFIG),
    }
    results = []
    for name in args.only.split(",") if args.only else runs:
        sets, fraction, *config = runs[name]
        if config:
            sets = [f"model={random_t5_large(Path('/tmp/t5-large-random'))}" if s == "model=T5" else s for s in sets]
        results.append(run(name, sets, log, fraction, *config))
        # written after every run, so a run cut short by a time limit keeps the others
        (args.out / "cuda_summaries.json").write_text(json.dumps(results, indent=1))
    print(f"\n{torch.cuda.get_device_name()} | torch {torch.__version__}")
    print("| run | exit | wall s | batch | batch search: probes (s), restarts | steps | train s (budget) | tok/s | precision | peak GPU GB | footprint |"
          " eval loss | generation s | SQL valid base/LoRA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s, e = r.get("train", {}), r.get("eval", {})
        valid = "/".join(f"{e[side].get('sql_valid', 0):.2f}" for side in ("base", "lora")) if e else "-"
        budget_s = f" ({60 * s['max_minutes']:g})" if s.get("max_minutes") else ""
        fit = s.get("batch_fit") or {}
        search = (f"{','.join(str(p[0]) for p in fit['probes'])} ({fit['seconds']})" if fit else "-") + \
            f", {s.get('oom_restarts')}"
        print(f"| {r['name']} | {r['exit_code']} | {r['wall_s']} | {s.get('batch_size')} | {search} | {s.get('steps')} | "
              f"{s.get('wall_time_s')}{budget_s} | "
              f"{s.get('tokens_per_s')} | {s.get('precision')} | {s.get('peak_gpu_memory_gb')} | "
              f"{s.get('memory_line', '').split(': ')[-1]} | {s.get('eval_loss_start') or float('nan'):.3f} -> "
              f"{s.get('eval_loss_end') or float('nan'):.3f} | {e.get('generation_s')} | {valid} |")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
