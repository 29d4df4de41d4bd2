"""Dev split for recipe selection: whole database-like blocks of train.jsonl held out.

Spider's training rows come grouped by database; a row and any row at most 60 lines later that
shares a CREATE TABLE name with it are one block (about one database). A seeded choice of 14
blocks that touch none of the 5 evaluation databases' table names is the dev set (~360 rows);
trials train on the rest. No decision of the recipe looks at `val_with_db.jsonl`'s rows.

Also writes `other_dbs.jsonl`: the rows of `val.jsonl` (Spider dev) that share no question and no
table name with the 5 evaluation databases, a second test set over databases not in `data/`.

    .venv/bin/python bench/recipe/make_dev.py [OUT_DIR]   # default /tmp/recipe
"""
import json
import random
import re
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/recipe")
out.mkdir(parents=True, exist_ok=True)
rows = [json.loads(line) for line in open("data/sql-create-context/train.jsonl")]
evalrows = [json.loads(line) for line in open("data/sql-create-context/val_with_db.jsonl")]
table_name = re.compile(r"CREATE TABLE (\w+)", re.I)


def tables(row):
    return {t.lower() for t in table_name.findall(row["context"])}


eval_tables = set().union(*(tables(r) for r in evalrows))
eval_questions = {r["question"].strip().lower() for r in evalrows}
names = [tables(r) for r in rows]
reach = list(range(len(rows)))
for i in range(len(rows)):
    for j in range(i + 1, min(len(rows), i + 60)):
        if names[i] & names[j]:
            reach[i] = j
blocks, start, end = [], 0, 0
for i in range(len(rows)):
    if i > end:
        blocks.append(list(range(start, end + 1)))
        start = i
    end = max(end, reach[i])
blocks.append(list(range(start, len(rows))))
rng = random.Random(7)
order = list(range(len(blocks)))
rng.shuffle(order)
dev_idx = []
for b in order:
    if set().union(*(names[i] for i in blocks[b])) & eval_tables or len(blocks[b]) > 60:
        continue  # no evaluation database's tables; small blocks keep dev spread over databases
    dev_idx += blocks[b]
    if len(dev_idx) >= 360:
        break
dev_set = set(dev_idx)
train_rows = [r for i, r in enumerate(rows) if i not in dev_set]
dev_rows = [rows[i] for i in sorted(dev_idx)]
assert not any(r["question"].strip().lower() in eval_questions for r in dev_rows)
rng.shuffle(dev_rows)
(out / "train_minus_dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
(out / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dev_rows))
other = [json.loads(line) for line in open("data/sql-create-context/val.jsonl")]
other = [r for r in other if r["question"].strip().lower() not in eval_questions and not tables(r) & eval_tables]
(out / "other_dbs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in other))
print(f"{out}: other_dbs {len(other)} rows")
print(f"{out}: dev {len(dev_rows)} rows from {len(blocks)} blocks, train {len(train_rows)} rows")
