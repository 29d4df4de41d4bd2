"""Useful tokens/s over a long training run, batch widths rounded to a multiple or not.

Runs `loratune train` on a config (default: the 15-minute text-to-SQL recipe at `--batch-size`
rows per step, no time budget, `--steps` optimizer steps, no evaluations or checkpoints, layers
compiled) once per setting of `train.pad_to_multiple_of`, each in its own process, in the order
given (`--settings 1,auto,auto,1` measures each order of the pair once, so a drifting machine moves
both alike), and prints the useful tokens/s of each window of `--window` steps. Every run trains the
same batches in the same order; only the padding differs. Why this is a bench of whole runs and not
an A/B per step: what rounding saves builds up over a run (every new batch width a process sees
slows the steps after it: docs/benchmarks.md, "long_run.py"), so both settings in one process would
share it.

The defaults are the command behind the table in docs/benchmarks.md: 310 steps of 8 rows (the
recipe itself trains 2 rows per step; the table was measured at 8), settings `1,auto,auto,1`.

    .venv/bin/python bench/long_run.py [--steps 310] [--batch-size 8] [--settings 1,auto,auto,1] [--json]

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


def train(config: str, setting: str, steps: int, batch_size: int, out: str, extra: list[str]) -> Path:
    name = f"pad-{setting}"
    sets = [f"name={name}", f"output_dir={out}", "train.max_minutes=null", f"train.max_steps={steps}",
            f"train.batch_size={batch_size}",
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
    parser.add_argument("--steps", type=int, default=310, help="optimizer steps per run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="rows per step (train.batch_size; default: %(default)s)")
    parser.add_argument("--window", type=int, default=50, help="steps per window (a multiple of 10)")
    parser.add_argument("--settings", default="1,auto,auto,1",
                        help="train.pad_to_multiple_of values, in run order (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], help="more config overrides, as in loratune")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.window % 10 or (args.steps - FIRST) % 10:
        parser.error("--window and --steps - 10 must be multiples of 10 (the steps are logged every 10)")
    out = tempfile.mkdtemp(prefix="loratune-long-run-")
    runs = []
    for i, setting in enumerate(args.settings.split(",")):
        print(f"training with train.pad_to_multiple_of={setting} ...", file=sys.stderr, flush=True)
        run_dir = train(args.config, setting, args.steps, args.batch_size, f"{out}/{i}", args.set)
        starts, rates, overall = window_rates(run_dir, args.steps, args.window)
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
