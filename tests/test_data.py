"""Reading rows, splitting, tokenizing: masks, truncation, drops, and clear errors."""

import json
import time

import pytest

from loratune.config import DataSettings
from loratune.data import (
    IGNORE_INDEX,
    check_columns,
    load_splits,
    read_rows,
    render_prompt,
    tokenize_rows,
)
from loratune.errors import DataError
from loratune.models.load import load_model
from loratune.tasks import get_task

SQL = get_task("sql-create-context")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sql_rows(n):
    return [{"question": f"How many heads older than {i}?", "context": "CREATE TABLE head (age INTEGER)",
             "answer": f"SELECT COUNT(*) FROM head WHERE age > {i}"} for i in range(n)]


def test_reads_jsonl_json_csv_parquet(tmp_path):
    rows = sql_rows(3)
    jl = write_jsonl(tmp_path / "a.jsonl", rows)
    js = tmp_path / "a.json"
    js.write_text(json.dumps(rows))
    csv_path = tmp_path / "a.csv"
    csv_path.write_text("question,context,answer\n" + "\n".join(f'"{r["question"]}","{r["context"]}","{r["answer"]}"' for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq_path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pq_path)
    for path in (jl, js, csv_path, pq_path):
        got = read_rows(str(path))
        assert [r["answer"] for r in got] == [r["answer"] for r in rows], path.suffix


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a", "context": "b", "answer": "c"}\n{"question": oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        read_rows(str(path))


def test_missing_column_names_file_and_line(tmp_path):
    rows = sql_rows(3)
    del rows[2]["answer"]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match=r"rows.jsonl:3: missing column 'answer'.*question, context, answer"):
        check_columns(read_rows(str(path)), SQL)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: the file has no rows"):
        read_rows(str(empty))
    with pytest.raises(DataError, match="data file not found"):
        read_rows(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        read_rows(str(tmp_path / "x.txt"))


def test_hub_dataset_offline_is_a_fast_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(DataError, match="cannot be reached"):
        read_rows("b-mc2/sql-create-context")
    assert time.perf_counter() - started < 5


def test_split_is_seeded_90_10(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", sql_rows(50))
    cfg = DataSettings(train=str(path))
    train, held = load_splits(cfg, SQL, seed=1)
    assert (len(train), len(held)) == (45, 5)
    again_train, again_held = load_splits(cfg, SQL, seed=1)
    assert [r["answer"] for r in held] == [r["answer"] for r in again_held]
    _, other = load_splits(cfg, SQL, seed=2)
    assert [r["answer"] for r in held] != [r["answer"] for r in other]
    assert not {r["answer"] for r in held} & {r["answer"] for r in train}


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_model(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def t5(tiny_t5_dir):
    return load_model(str(tiny_t5_dir))


def test_causal_prompt_tokens_are_masked(llama):
    rows = sql_rows(2)
    features, stats = tokenize_rows(rows, SQL, llama.tokenizer, "causal", DataSettings())
    tok = llama.tokenizer
    for row, feature in zip(rows, features):
        prompt = render_prompt(tok, SQL.prompt(row), use_chat_template=True, system_prompt=None)
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert feature["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
        answer = feature["labels"][n_prompt:]
        assert IGNORE_INDEX not in answer
        assert answer[-1] == tok.eos_token_id
        assert tok.decode(answer[:-1]) == row["answer"]
        assert feature["input_ids"][n_prompt:] == answer
    assert stats.rows == 2 and stats.truncated == 0


def test_seq2seq_labels_are_the_target(t5):
    row = sql_rows(1)[0]
    features, _ = tokenize_rows([row], SQL, t5.tokenizer, "seq2seq", DataSettings())
    assert t5.tokenizer.decode(features[0]["labels"], skip_special_tokens=True) == row["answer"]
    assert t5.tokenizer.decode(features[0]["input_ids"], skip_special_tokens=True) == SQL.prompt(row)


def test_truncate_and_drop_are_counted(t5):
    rows = sql_rows(4)
    rows[0]["question"] = "x" * 300  # byte-level: 300 tokens
    cfg = DataSettings(max_source_tokens=200, max_target_tokens=20)
    features, stats = tokenize_rows(rows, SQL, t5.tokenizer, "seq2seq", cfg)
    assert len(features) == 4 and stats.truncated == 4  # every answer is > 20 bytes; row 0 also long
    assert max(len(f["labels"]) for f in features) == 21  # 20 + eos
    assert max(len(f["input_ids"]) for f in features) == 201  # 200 + eos
    dropped = DataSettings(max_source_tokens=200, max_target_tokens=100, length_policy="drop")
    features, stats = tokenize_rows(rows, SQL, t5.tokenizer, "seq2seq", dropped)
    assert (len(features), stats.dropped) == (3, 1)
    pct = DataSettings(drop_percentile=50.0)
    features, stats = tokenize_rows(rows, SQL, t5.tokenizer, "seq2seq", pct)
    assert stats.dropped == 1 and len(features) == 3  # only the long row is above the median
    assert stats.as_dict()["source_tokens"]["max"] == 434


def test_pad_multiple_rounds_on_cpu_under_bf16_by_default_and_obeys_the_setting():
    from loratune.data import pad_multiple

    assert pad_multiple("auto", "cpu", "bf16") == 32
    assert pad_multiple("auto", "cpu", "fp32") is None
    assert pad_multiple("auto", "cuda", "bf16") is None
    assert pad_multiple(1, "cpu", "bf16") is None and pad_multiple(8, "cuda", "fp32") == 8
