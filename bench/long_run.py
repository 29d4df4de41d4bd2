"""Useful tokens/s over a long training run, batch widths rounded to a multiple or not.

Runs `loratune train` on a config (default: the 15-minute text-to-SQL recipe, no time budget,
`--steps` optimizer steps, no evaluations or checkpoints, layers compiled) once per setting of
`train.pad_to_multiple_of`, each in its own process, in the order given (`--settings 1,auto,auto,1`
alternates them, so a drifting machine moves both alike), and prints the useful tokens/s of each
window of `--window` steps. Every run trains the same batches in the same order; only the padding
differs. Why this is a bench of whole runs and not an A/B per step: what rounding saves builds up
over a run (every new batch width a process sees slows the steps after it, README "Benchmarks":
"Throughput fell as a run went on"), so both settings in one process would share it.

    .venv/bin/python bench/long_run.py --steps 400 --settings 1,auto,auto,1 --json

`--json` prints, last, one JSON object: {"windows": [first step, ...], "runs": [{"setting": S,
"tokens_per_s": F, "windows_tokens_per_s": [F, ...]}, ...]}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST = 10  # the first steps compile the layers and warm the caches: windows start after them


def train(config: str, setting: str, steps: int, out: str, extra: list[str]) -> Path:
    name = f"pad-{setting}"
    sets = [f"name={name}", f"output_dir={out}", "train.max_minutes=null", f"train.max_steps={steps}",
            "train.eval_steps=1000000", "train.logging_steps=10", "train.compile=true",
            f"train.pad_to_multiple_of={setting}", *extra]
    cmd = [sys.executable, "-m", "loratune", "train", config] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "TQDM_DISABLE": "1"}  # no progress bars: the table is the output
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env=env)
    return Path(out) / name


def window_rates(run_dir: Path, steps: int, window: int) -> tuple[list[int], list[float], float]:
    """Useful (non-padding) tokens/s per window of steps, and over all steps after the first FIRST."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in rows if "loss" in r and "num_input_tokens_seen" in r}

    def rate(a: int, b: int) -> float:
        tokens = logged[b]["num_input_tokens_seen"] - logged[a]["num_input_tokens_seen"]
        return round(tokens / (logged[b]["elapsed_s"] - logged[a]["elapsed_s"]), 1)

    starts = list(range(FIRST, steps, window))
    return starts, [rate(a, min(a + window, steps)) for a in starts], rate(FIRST, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/text2sql-cpu-15min.yaml")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--window", type=int, default=50, help="steps per window (a multiple of 10)")
    parser.add_argument("--settings", default="1,auto", help="train.pad_to_multiple_of values, in run order")
    parser.add_argument("--set", action="append", default=[], help="more config overrides, as in loratune")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.window % 10 or (args.steps - FIRST) % 10:
        parser.error("--window and --steps - 10 must be multiples of 10 (the steps are logged every 10)")
    out = tempfile.mkdtemp(prefix="loratune-long-run-")
    runs = []
    for i, setting in enumerate(args.settings.split(",")):
        print(f"training with train.pad_to_multiple_of={setting} ...", file=sys.stderr, flush=True)
        starts, rates, overall = window_rates(train(args.config, setting, args.steps, f"{out}/{i}", args.set),
                                              args.steps, args.window)
        runs.append({"setting": setting, "tokens_per_s": overall, "windows_tokens_per_s": rates})

    print(f"\nuseful tokens/s per window of {args.window} steps, {args.config}, {args.steps} steps\n")
    print("| train.pad_to_multiple_of | " + " | ".join(f"steps {a}-{min(a + args.window, args.steps)}" for a in starts)
          + " | last / first window | steps 10-end |")
    print("|---" * (len(starts) + 3) + "|")
    for r in runs:
        w = r["windows_tokens_per_s"]
        print(f"| {r['setting']} | " + " | ".join(f"{x:.0f}" for x in w) + f" | {w[-1] / w[0]:.2f} | {r['tokens_per_s']:.1f} |")
    if args.json:
        print(json.dumps({"windows": starts, "runs": runs}))


if __name__ == "__main__":
    main()
