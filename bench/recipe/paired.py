"""Two arms of dev trials compared row by row: each trial's saved dev_predictions.jsonl re-scored
(test-suite execution verdicts, `evaluation.base_vs_lora.score_answers`), the arms' seeds pooled,
and a paired bootstrap of the difference (`evaluation.metrics.paired_bootstrap`) over the same rows.

    .venv/bin/python bench/recipe/paired.py NEW=run_a,run_a_seed1 OLD=run_b,run_b_seed1   (RECIPE_DIR, default /tmp/recipe)

Prints each arm's pooled accuracy, then the difference NEW - OLD with its 95% interval. Both arms
need the same seeds in the same order: row i of one arm's pool is paired with row i of the other's.
"""
import json
import os
import sys
from pathlib import Path

from loratune.data import load_splits
from loratune.evaluation.base_vs_lora import load_run_config, score_answers
from loratune.evaluation.metrics import paired_bootstrap
from loratune.tasks import get_task

recipe = Path(os.environ.get("RECIPE_DIR", "/tmp/recipe"))


def verdicts(name: str) -> list[bool]:
    run = recipe / "runs" / name
    cache = run / "dev_verdicts.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    cfg = load_run_config(run, [f"data.eval={recipe / 'dev.jsonl'}"])
    task = get_task(cfg.task)
    _, rows = load_splits(cfg.data, task, cfg.train.seed)
    preds = [json.loads(line) for line in (run / "dev_predictions.jsonl").read_text().splitlines()]
    rows = rows[: len(preds)]
    if any(r["question"] != p["question"] for r, p in zip(rows, preds)):
        sys.exit(f"{run}/dev_predictions.jsonl: rows are not the dev rows in order")
    scores, per = score_answers([p["prediction"] for p in preds], [p["reference"] for p in preds], rows, task, cfg)
    cache.write_text(json.dumps(per["execution_accuracy"]))
    print(f"{name}: {scores['execution_accuracy']:.3f}", file=sys.stderr)
    return per["execution_accuracy"]


def main() -> None:
    if len(sys.argv) != 3 or not all("=" in arg for arg in sys.argv[1:]):
        sys.exit(__doc__)
    arms = dict(arg.split("=", 1) for arg in sys.argv[1:])
    if len(arms) != 2:
        sys.exit(__doc__)
    pooled = {arm: sum((verdicts(n) for n in names.split(",")), []) for arm, names in arms.items()}
    new, old = list(arms)
    if len(pooled[new]) != len(pooled[old]):
        sys.exit(f"{new} has {len(pooled[new])} verdicts, {old} {len(pooled[old])}: not paired")
    for arm in (new, old):
        print(f"{arm}: {sum(pooled[arm]) / len(pooled[arm]):.4f} over {len(pooled[arm])} verdicts")
    print(f"{new} - {old}:", json.dumps(paired_bootstrap(pooled[old], pooled[new], samples=2000)))


if __name__ == "__main__":
    main()
