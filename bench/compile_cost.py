"""What torch.compile costs and gives for loratune's training step: one mode per process.

Trains SmolLM2-135M (LoRA r16 on every projection, dropout 0, frozen projections in bf16 under
bf16 autocast, eager attention up to 256 tokens: loratune's defaults) with a plain loop for
`--steps` steps and prints the first step's seconds (compiling happens there) and the useful
tokens/s of the second half of the steps. Modes:
  eager     no compilation;
  model     the whole decoder compiled as one graph (`torch.compile(model.model, dynamic=True)`);
  layers    each decoder layer compiled (`loratune.training.compilation.compile_layers`: one graph serves
            every layer; what `train.compile` does).
Run each mode in its own process, twice, to see inductor's on-disk cache cold and warm (point
TORCHINDUCTOR_CACHE_DIR at an empty folder for a cold start). Add `--kv-cache` to see what a KV
cache in training does to per-layer compilation (every layer recompiles).

The defaults (`layers`, 8 steps), run with an empty cache, are the command behind the table in
docs/benchmarks.md, which reports the first step; the steps after it need a longer run
(`--steps 24`) to give a steady tokens/s.

    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) .venv/bin/python bench/compile_cost.py [{eager,model,layers}] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import train_levers as levers  # noqa: E402

from loratune.models.precision import bf16_supported  # noqa: E402
from loratune.training.attention import use_attention_for  # noqa: E402
from loratune.training.compilation import compile_layers, set_use_cache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="layers", choices=["eager", "model", "layers"],
                        help="what is compiled (default: layers, as train.compile does)")
    parser.add_argument("--steps", type=int, default=8, help="training steps (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=None, help="keep only the first N decoder layers")
    parser.add_argument("--kv-cache", action="store_true", help="leave use_cache on while training")
    parser.add_argument("--config", default=str(ROOT / "configs" / "text2sql-smollm2.yaml"))
    args = parser.parse_args()
    bf16 = bf16_supported("cpu")
    features, cfg = levers.load_features(args.config, 256)
    m = levers.Model(cfg.model, "fp32", args.layers, True, "bf16" if bf16 else "fp32")
    variant = levers.Variant(dropout=0.0, prepared=True, attn="eager")
    m.configure(variant)
    batches = levers.batches(features, variant)
    if args.mode == "model":
        set_use_cache(m.model, args.kv_cache)
        m.model.base_model.model.model.compile(dynamic=True)
    elif args.mode == "layers":
        compile_layers(m.model)
        set_use_cache(m.model, args.kv_cache)
    steps = []
    for i in range(args.steps):
        batch = levers.collate(features, batches[i % len(batches)], m.pad_id)
        use_attention_for(m.model, "cpu", batch["input_ids"].shape[1])
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = levers.completion_loss(m.model, batch)
        loss.backward()
        m.opt.step()
        m.opt.zero_grad(set_to_none=True)
        steps.append((time.perf_counter() - started, int(batch["attention_mask"].sum()), float(loss)))
        print(f"step {i + 1}: {steps[-1][0]:.2f}s, {steps[-1][1]} useful tokens, loss {steps[-1][2]:.4f}",
              file=sys.stderr, flush=True)
    tail = steps[len(steps) // 2:]
    print(json.dumps({"mode": args.mode, "kv_cache": args.kv_cache, "first_step_s": round(steps[0][0], 1),
                      "total_s": round(sum(s[0] for s in steps), 1),
                      "tokens_per_s_second_half": round(sum(s[1] for s in tail) / sum(s[0] for s in tail), 1)}))


if __name__ == "__main__":
    main()
