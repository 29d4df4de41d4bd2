#!/bin/bash
# One trial of the demo's config (configs/text2sql-smollm2.yaml) as `make demo` runs it: time-budgeted
# (train.max_minutes: 6, so a trial slower per row pays in rows), trained on the dev split's training
# rows with dev.jsonl as the eval-loss rows, then scored on 200 dev rows by dev_eval.py.
# CONFIG=configs/text2sql-cpu-15min.yaml runs the 15-minute recipe the same way (its own budget).
# AVX2=1 caps oneDNN, MKL and torch's vector code at AVX2: the fp32 path, as on a CPU without native
# bf16. Run from the repository root after make_dev.py:
#   [AVX2=1] [CONFIG=...] bench/recipe/demo_trial.sh NAME [--set KEY=VALUE ...]   (RECIPE_DIR, default /tmp/recipe)
# Logs to $RECIPE_DIR/NAME.log; the run lands in $RECIPE_DIR/runs/NAME; results.jsonl gets a line.
set -e
name=$1; shift
dir=${RECIPE_DIR:-/tmp/recipe}
if [ "${AVX2:-0}" = 1 ]; then
  export ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2
fi
.venv/bin/loratune train "${CONFIG:-configs/text2sql-smollm2.yaml}" --set name="$name" --set output_dir="$dir/runs" \
  --set data.train="$dir/train_minus_dev.jsonl" --set data.eval="$dir/dev.jsonl" --overwrite "$@" > "$dir/$name.log" 2>&1
.venv/bin/python bench/recipe/dev_eval.py "$dir/runs/$name" --rows 200 >> "$dir/$name.log" 2>&1
tail -1 "$dir/results.jsonl"
