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

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "text2sql-smollm2.yaml"
# Run one config through the CLI in this process's Python, optionally under a cap on CUDA memory:
# the cap makes the auto batch search meet real out-of-memory errors on an 80 GB card.
CAPPED = (
    "import sys, torch; fraction = float(sys.argv[1]); "
    "fraction < 1 and torch.cuda.set_per_process_memory_fraction(fraction); "
    "from loratune.cli import main; sys.argv = ['loratune'] + sys.argv[2:]; main()"
)


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


def run(name: str, sets: list[str], log: Path, fraction: float = 1.0) -> dict:
    """`loratune run` with the demo config and `sets`; returns its summaries (training + eval)."""
    command = [sys.executable, "-c", CAPPED, str(fraction), "run", str(CONFIG), "--overwrite",
               "--set", f"name={name}", *[a for s in sets for a in ("--set", s)]]
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n===== {name}: {' '.join(command[3:])}\n")
        out.flush()
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
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
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/cuda_check.py: no CUDA device here")
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "cuda_runs.log"
    model = random_model(args.shape, Path("/tmp/smollm2-random"))
    common = [f"model={model}", "train.max_minutes=null", f"train.max_steps={args.steps}"]
    runs = {
        # bf16 on the GPU, auto batch on a card with room to spare.
        "cuda-bf16-auto": (common + ["train.batch_size=auto"], 1.0),
        # auto batch under a ~2 GB cap: the search has to shrink the batch.
        "cuda-auto-capped": (common + ["train.batch_size=auto", "train.max_steps=10", "eval.limit=16"],
                             2.0 / (torch.cuda.get_device_properties(0).total_memory / 1e9)),
        # QLoRA: 4-bit NF4 base weights (bitsandbytes), bf16 compute, fp32 adapters.
        "cuda-qlora": (common + ["train.load_in_4bit=true", "train.batch_size=16", "eval.limit=32"], 1.0),
        # the same batch in plain bf16, to set QLoRA's memory and speed beside
        "cuda-bf16-b16": (common + ["train.batch_size=16", "eval.limit=32"], 1.0),
    }
    results = []
    for name in args.only.split(",") if args.only else runs:
        sets, fraction = runs[name]
        results.append(run(name, sets, log, fraction))
        # written after every run, so a run cut short by a time limit keeps the others
        (args.out / "cuda_summaries.json").write_text(json.dumps(results, indent=1))
    print(f"\n{torch.cuda.get_device_name()} | torch {torch.__version__}")
    print("| run | exit | wall s | batch | steps | tok/s | precision | peak GPU GB | footprint | eval loss |"
          " generation s | SQL valid base/LoRA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s, e = r.get("train", {}), r.get("eval", {})
        valid = "/".join(f"{e[side].get('sql_valid', 0):.2f}" for side in ("base", "lora")) if e else "-"
        print(f"| {r['name']} | {r['exit_code']} | {r['wall_s']} | {s.get('batch_size')} | {s.get('steps')} | "
              f"{s.get('tokens_per_s')} | {s.get('precision')} | {s.get('peak_gpu_memory_gb')} | "
              f"{s.get('memory_line', '').split(': ')[-1]} | {s.get('eval_loss_start') or float('nan'):.3f} -> "
              f"{s.get('eval_loss_end') or float('nan'):.3f} | {e.get('generation_s')} | {valid} |")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
