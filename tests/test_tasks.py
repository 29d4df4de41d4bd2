"""Task prompts: the original's formats, verbatim."""

import pytest

from loratune.errors import ConfigError
from loratune.tasks import TASKS, get_task
from loratune.tasks.sql import parse_llama2_sql

LLAMA2_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nHow many heads of the departments are older than 56 ?\n\n"
    "### Input:\nCREATE TABLE head (age INTEGER)\n\n### Response:\n"
)


def test_registry_names():
    assert set(TASKS) == {"finance-alpaca", "sql-create-context", "llama2-sql", "cnn-dailymail",
                          "prompt-completion", "messages", "tat-qa", "ectsum", "ectsum-lead"}
    with pytest.raises(ConfigError, match="choose one of"):
        get_task("nope")


def test_finance_prompts_are_the_originals():
    task = get_task("finance-alpaca")
    assert task.prompt({"instruction": "What is a bond?", "input": "", "output": "x"}) == "What is a bond?\nAnswer: "
    assert task.prompt({"instruction": "Explain.", "input": "Rates rose.", "output": "x"}) == (
        "Given the context.\nRates rose.\nExplain.\nAnswer: "
    )


def test_summary_prompt_is_the_original():
    task = get_task("cnn-dailymail")
    row = {"article": "Markets fell.", "highlights": "Down."}
    assert task.prompt(row) == "Summarize the following article:\nMarkets fell.\nSummary:"
    assert task.target(row) == "Down."


def test_llama2_sql_parses_sections_like_sql_create_context():
    parsed = parse_llama2_sql(LLAMA2_INPUT)
    assert parsed == {"question": "How many heads of the departments are older than 56 ?",
                      "context": "CREATE TABLE head (age INTEGER)"}
    llama = get_task("llama2-sql")
    plain = get_task("sql-create-context")
    row = {"input": LLAMA2_INPUT, "output": "SELECT COUNT(*) FROM head WHERE age > 56"}
    assert llama.prompt(row) == plain.prompt({**parsed, "answer": ""})
    assert llama.build_schema(row) == "CREATE TABLE head (age INTEGER)"
    with pytest.raises(ValueError, match="### Instruction"):
        parse_llama2_sql("no sections")


def test_sql_message_splits_schema_from_question():
    row = get_task("sql-create-context").row_from_message(
        "CREATE TABLE head (age INTEGER); How many heads are older than 56?")
    assert row == {"question": "How many heads are older than 56?", "context": "CREATE TABLE head (age INTEGER)"}


def test_messages_task():
    task = get_task("messages")
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert task.prompt(row) == [{"role": "user", "content": "hi"}]
    assert task.target(row) == "hello"
    with pytest.raises(ValueError, match="last message"):
        task.target({"messages": [{"role": "user", "content": "hi"}]})


def test_shipped_sql_training_targets_are_already_clean_sql():
    # Why the 15-minute recipe has no target-normalising option (docs/recipes/text2sql.md): the
    # training rows' answers are already in clean form; only Spider's original gold in
    # val_with_db.jsonl has `name ,  country` spacing, and the judge compares that by execution.
    import json
    import re
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "data" / "sql-create-context"
    task = get_task("sql-create-context")

    def spider_spaced(sql: str) -> bool:
        outside_literals = re.sub(r"'[^']*'|\"[^\"]*\"", "''", sql)
        return bool(re.search(r"\s,|\s{2,}", outside_literals))

    def count(name: str) -> int:
        lines = (folder / name).read_text(encoding="utf-8").splitlines()
        return sum(spider_spaced(task.target(json.loads(line))) for line in lines)

    assert count("train.jsonl") == 0
    assert count("val_with_db.jsonl") == 76
