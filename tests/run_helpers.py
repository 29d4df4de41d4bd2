"""Run configs for training tests on the tiny models (shared by test_train, test_trainer, ...)."""

import json

from loratune.config import config_from_dict

PAIRS = [("red", "apple"), ("yellow", "banana"), ("green", "lime"), ("purple", "grape"),
         ("orange", "orange"), ("brown", "kiwi")]


def memorise_file(tmp_path, repeat=6):
    rows = [{"prompt": f"Fruit of colour {c}:", "completion": f" {f}"} for c, f in PAIRS] * repeat
    path = tmp_path / "fruit.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_cfg(tmp_path, model_dir, name="run", **train):
    data = memorise_file(tmp_path)
    return config_from_dict({
        "name": name, "model": str(model_dir), "task": "prompt-completion", "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(data), "eval": str(data), "max_eval_rows": 6, "use_chat_template": False},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 30, "lr": 1e-2, "batch_size": 6, "logging_steps": 5, "eval_steps": 15,
                  "warmup_ratio": 0.0, "seed": 3, **train},
    })


# Three text-to-SQL rows over one table, for evaluation tests on the tiny models.
SQL_ROWS = [
    {"question": "How many singers are there?", "context": "CREATE TABLE singer (name VARCHAR, age INTEGER)",
     "answer": "SELECT COUNT(*) FROM singer"},
    {"question": "List singer names older than 30.", "context": "CREATE TABLE singer (name VARCHAR, age INTEGER)",
     "answer": "SELECT name FROM singer WHERE age > 30"},
    {"question": "What is the oldest age?", "context": "CREATE TABLE singer (name VARCHAR, age INTEGER)",
     "answer": "SELECT MAX(age) FROM singer"},
]
