"""Score one trial's adapter (or the base model, --base) on the dev rows; append a line to results.jsonl.

Generation and scoring are loratune's own (`inference.generate.generate_texts`,
`evaluation.base_vs_lora.score_answers`): the dev rows have no real database, so execution accuracy
is the test-suite verdict on synthesized databases (`eval.sql.num_dbs`), stricter than the
real-database figure on the 115 evaluation rows.

    .venv/bin/python bench/recipe/dev_eval.py RUN_DIR [--rows 200] [--base] [--set KEY=VALUE] [--tag _x]
"""
import argparse
import json
import os
import time
from pathlib import Path

from peft import PeftModel

from loratune.data import eval_prompts, load_splits
from loratune.evaluation.base_vs_lora import load_run_config, score_answers
from loratune.inference.generate import generate_texts
from loratune.models.load import load_model
from loratune.tasks import get_task

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
parser.add_argument("--rows", type=int, default=200)
parser.add_argument("--base", action="store_true")
parser.add_argument("--set", action="append", default=[])
parser.add_argument("--tag", default="")
args = parser.parse_args()
run = Path(args.run_dir)
recipe_dir = Path(os.environ.get("RECIPE_DIR", "/tmp/recipe"))
cfg = load_run_config(run, [f"data.eval={recipe_dir / 'dev.jsonl'}", *args.set])
task = get_task(cfg.task)
_, rows = load_splits(cfg.data, task, cfg.train.seed)
rows = rows[: args.rows]
loaded = load_model(cfg.model)
prompts = eval_prompts(rows, task, loaded.tokenizer, loaded.model_type, cfg.data)
references = [task.target(r) for r in rows]
model = loaded.model if args.base else PeftModel.from_pretrained(loaded.model, str(run / "adapter")).merge_and_unload()
started = time.time()
predictions = generate_texts(model, loaded.tokenizer, loaded.model_type, prompts, cfg.eval.generation,
                             batch_size=cfg.eval.batch_size, task_family=task.family)
generation_s = time.time() - started
scores, _ = score_answers(predictions, references, rows, task, cfg)
summary_path = run / "run_summary.json"
summary = json.loads(summary_path.read_text()) if summary_path.is_file() and not args.base else {}
line = {"run": run.name + args.tag, "side": "base" if args.base else "lora", "rows": len(rows),
        "gen_s": round(generation_s), "exec": round(scores["execution_accuracy"], 3),
        "valid": round(scores["sql_valid"], 3), "em": round(scores["sql_exact_match"], 3),
        "steps": summary.get("steps"), "train_s": summary.get("wall_time_s"), "tok_s": summary.get("tokens_per_s"),
        "tokens": summary.get("train_tokens"), "eval_loss": summary.get("eval_loss_end"), "set": args.set}
print(json.dumps(line))
with open(recipe_dir / "results.jsonl", "a") as f:
    f.write(json.dumps(line) + "\n")
with open(run / f"dev_predictions{args.tag}{'_base' if args.base else ''}.jsonl", "w") as f:
    for prediction, reference, row in zip(predictions, references, rows):
        f.write(json.dumps({"question": row["question"], "reference": reference, "prediction": prediction}) + "\n")
