#!/bin/bash
# One recipe trial: configs/text2sql-cpu-15min.yaml trained on the dev split's training rows for a
# fixed number of steps (no time budget, so trials compare rows seen, not machine load), then scored
# on the dev rows by dev_eval.py. Run from the repository root after make_dev.py:
#   bench/recipe/trial.sh NAME [--set KEY=VALUE ...]     (RECIPE_DIR, default /tmp/recipe)
# Logs to $RECIPE_DIR/NAME.log; the run lands in $RECIPE_DIR/runs/NAME; results.jsonl gets a line.
set -e
name=$1; shift
dir=${RECIPE_DIR:-/tmp/recipe}
.venv/bin/loratune train configs/text2sql-cpu-15min.yaml --set name="$name" --set output_dir="$dir/runs" \
  --set data.train="$dir/train_minus_dev.jsonl" --set data.eval="$dir/dev.jsonl" \
  --set train.max_minutes=null --set train.max_steps=120 --set train.eval_steps=1000 --set train.eval_loss_rows=16 \
  --set train.save_steps=1000 --set train.logging_steps=10 --overwrite "$@" > "$dir/$name.log" 2>&1
.venv/bin/python bench/recipe/dev_eval.py "$dir/runs/$name" --rows 200 >> "$dir/$name.log" 2>&1
tail -1 "$dir/results.jsonl"
