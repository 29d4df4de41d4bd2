"""Run reports: metric tables, report.md / report.html from a fixture run directory, comparisons."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import yaml

from loratune.errors import DataError, LoratuneError, RunDirError
from loratune.evaluation.tables import format_metrics_tables
from loratune.reporting.report import compare_runs, load_run, write_report

TRAINABLE = "Trainable parameters 9,437,184 || All parameters 792,587,264 || Trainable parameter percentage: 1.19%"
MEMORY = "Memory footprint of flan-t5-large with LoRA layers: 0.55 GB"


def training_log(epochs: int = 3, steps: int = 60, seed: int = 0) -> list[dict]:
    """Trainer-style log lines: a noisy, falling train loss every step, eval loss per epoch."""
    rng = random.Random(seed)
    per_epoch = steps // epochs
    lines = []
    for step in range(1, steps + 1):
        loss = 2.5 * math.exp(-step / 25) + 0.6 + rng.uniform(-0.15, 0.15)
        lines.append({"loss": round(loss, 4), "learning_rate": 3e-3 * (1 - step / steps), "step": step,
                      "epoch": round(step / per_epoch, 4)})
        if step % per_epoch == 0:
            lines.append({"eval_loss": round(1.9 * math.exp(-step / 40) + 0.7, 4), "step": step,
                          "epoch": float(step // per_epoch)})
    lines.append({"train_runtime": 123.4, "train_loss": 1.23, "step": steps, "epoch": float(epochs)})
    return lines


def sample_metrics(sql: bool = False) -> dict:
    base = {"rouge1": 0.2, "rouge2": 0.1, "rougeL": 0.18, "rougeLsum": 0.19, "exact_match": 0.05,
            "bleu": 0.07, "chrf": 0.3}
    lora = {"rouge1": 0.41234, "rouge2": 0.25, "rougeL": 0.4, "rougeLsum": 0.405, "exact_match": 0.25,
            "bleu": 0.2, "chrf": 0.5}
    if sql:
        base.update(sql_valid=0.8, sql_exact_match=0.1, execution_accuracy=0.3, execution_accuracy_real_db=None)
        lora.update(sql_valid=0.95, sql_exact_match=0.4, execution_accuracy=0.6, execution_accuracy_real_db=None)
    intervals = {k: {"diff": lora[k] - base[k], "low": lora[k] - base[k] - 0.05, "high": lora[k] - base[k] + 0.05}
                 for k in base if base[k] is not None}
    return {"n": 20, "base": base, "lora": lora, "intervals": intervals}


def make_run(root: Path, name: str, *, sql: bool = False, evaluated: bool = True) -> Path:
    """A run directory as training and evaluation leave it."""
    run = root / name
    run.mkdir(parents=True)
    config = {"name": name, "model": "flan-t5-large", "task": "sql" if sql else "finance-qa",
              "data": {"max_source_tokens": 512, "max_target_tokens": 256, "length_policy": "truncate"},
              "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q", "v"]},
              "train": {"epochs": 3, "max_steps": -1, "lr": 0.003, "scheduler": "cosine", "batch_size": 8,
                        "grad_accum": 1, "seed": 42}}
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in training_log()), encoding="utf-8")
    summary = {"model": "flan-t5-large", "task": config["task"], "model_type": "seq2seq", "trainable_line": TRAINABLE,
               "memory_line": MEMORY, "train_rows": 1800, "eval_rows": 200, "wall_time_s": 3725.0,
               "tokens_per_s": 1534.2, "train_tokens": 5_712_000, "eval_loss_start": 2.6, "eval_loss_end": 0.83,
               "init_adapter": None, "precision": "bf16"}
    (run / "run_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    lengths = {"min": 12, "mean": 140.4, "p50": 120, "p95": 400, "max": 512}
    stats = {"train": {"rows": 1800, "truncated": 7, "dropped": 0, "source_tokens": lengths, "target_tokens": lengths},
             "eval": {"rows": 200, "truncated": 1, "dropped": 0, "source_tokens": lengths, "target_tokens": lengths}}
    (run / "data_stats.json").write_text(json.dumps(stats), encoding="utf-8")
    if evaluated:
        (run / "metrics.json").write_text(json.dumps(sample_metrics(sql)), encoding="utf-8")
        rows = [{"prompt": f"Question {i}: what is the margin?" + " context" * (300 if i == 0 else 3),
                 "reference": f"answer {i}", "base": f"base guess {i}", "lora": f"answer {i}"} for i in range(14)]
        rows[1]["lora"] = "<script>alert('x')</script> | pipe"
        rows[2]["prompt"] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Chat question?"}]
        (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return run


def test_format_metrics_tables_has_the_original_rouge_table_then_intervals() -> None:
    text = format_metrics_tables(sample_metrics())
    lines = text.splitlines()
    i = lines.index("|| Rouge-1 | Rouge-2 | Rouge-L | Rouge-Lsum |")
    assert lines[i + 1] == "|---|---|---|---|---|"
    assert lines[i + 2] == "| LoRA Model | 0.4123 | 0.2500 | 0.4000 | 0.4050 |"
    assert lines[i + 3] == "| Base Model | 0.2000 | 0.1000 | 0.1800 | 0.1900 |"
    assert "| Metric | LoRA | Base | LoRA − Base [95% CI] |" in lines
    assert "| Exact match | 0.2500 | 0.0500 | +0.2000 [+0.1500, +0.2500] |" in lines
    assert "| chrF | 0.5000 | 0.3000 | +0.2000 [+0.1500, +0.2500] |" in lines
    assert "Rouge-L +0.2200 [+0.1700, +0.2700]" in text
    assert "Execution accuracy" not in text  # not an SQL run


def test_format_metrics_tables_sql_rows_skip_null_metrics() -> None:
    text = format_metrics_tables(sample_metrics(sql=True))
    assert "| Execution accuracy | 0.6000 | 0.3000 | +0.3000 [+0.2500, +0.3500] |" in text
    assert "| SQL valid | 0.9500 | 0.8000 |" in text
    assert "real DB" not in text  # null on both sides


def test_format_metrics_tables_without_intervals_or_values() -> None:
    metrics = {"base": {"rouge1": 0.5, "exact_match": 0.1}, "lora": {"rouge1": 0.6, "exact_match": 0.3}}
    text = format_metrics_tables(metrics)
    assert "| LoRA Model | 0.6000 | n/a | n/a | n/a |" in text
    assert "| Exact match | 0.3000 | 0.1000 | +0.2000 |" in text
    assert "| BLEU | n/a | n/a | n/a |" in text


def test_write_report_markdown(tmp_path: Path) -> None:
    run = make_run(tmp_path, "fin")
    md_path, html_path = write_report(run)
    assert md_path == run / "report.md" and html_path == run / "report.html"
    md = md_path.read_text(encoding="utf-8")
    assert "|| Rouge-1 | Rouge-2 | Rouge-L | Rouge-Lsum |" in md
    assert "| Exact match | 0.2500 | 0.0500 |" in md
    assert f"- {TRAINABLE}" in md  # verbatim, as a list item
    assert MEMORY in md
    assert "Wall time 1h 02m 05s, 1,534.2 tokens/s over 5,712,000 training tokens" in md
    assert "Eval loss 2.6000 → 0.8300 (-68.1%)" in md
    assert "| train | 1800 | 7 | 0 | 12 / 140 / 120 / 400 / 512 |" in md
    for png in ("plots/train_loss.png", "plots/eval_loss.png", "plots/metrics.png"):
        assert f"]({png})" in md and (run / png).is_file()
    # Ten samples, not all fourteen; untrusted text is escaped and cannot break the table.
    assert "| 10 | " in md and "| 11 | " not in md
    assert "&lt;script&gt;" in md and "<script>" not in md
    assert "\\| pipe" in md
    assert "system: Be brief.<br>user: Chat question?" in md
    assert "characters omitted" in md  # the 2,000-character prompt is shortened


def test_write_report_html_is_self_contained_and_escaped(tmp_path: Path) -> None:
    run = make_run(tmp_path, "fin")
    _, html_path = write_report(run)
    page = html_path.read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 3
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<th>Rouge-1</th>" in page and "Trainable parameters 9,437,184" in page
    assert "plots/" not in page  # no links to files beside it


def test_report_for_run_not_yet_evaluated(tmp_path: Path) -> None:
    run = make_run(tmp_path, "fresh", evaluated=False)
    md = write_report(run)[0].read_text(encoding="utf-8")
    assert "metrics.json not found (the run has not been evaluated yet)" in md
    assert "predictions.jsonl not found" in md
    assert "plots/train_loss.png" in md and "plots/metrics.png" not in md


def test_report_with_only_a_config(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    (run / "config.yaml").write_text("name: bare\nmodel: tiny\ntask: sql\n", encoding="utf-8")
    md_path, html_path = write_report(run)
    md = md_path.read_text(encoding="utf-8")
    assert "Model: tiny. Task: sql." in md
    for name in ("data_stats.json", "run_summary.json", "metrics.jsonl", "metrics.json"):
        assert f"{name} not found" in md
    assert "data:image" not in html_path.read_text(encoding="utf-8")


def test_report_errors_name_the_directory_or_file(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="nowhere: run directory not found"):
        write_report(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="empty: not a run directory"):
        write_report(tmp_path / "empty")
    run = make_run(tmp_path, "broken")
    (run / "metrics.json").write_text('{"n": 3,\n "base": }', encoding="utf-8")
    with pytest.raises(DataError, match=r"metrics.json:2: malformed JSON"):
        write_report(run)
    (run / "metrics.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match=r"metrics.json: expected a JSON object, got list"):
        load_run(run)


def test_truncated_last_log_line_is_tolerated(tmp_path: Path) -> None:
    run = make_run(tmp_path, "running", evaluated=False)
    with (run / "metrics.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"loss": 0.7, "st')
    assert len(load_run(run).log) == len(training_log())
    text = (run / "metrics.jsonl").read_text(encoding="utf-8").replace('{"loss": 0.7, "st', '{"loss": 0.7, "st\n{}')
    (run / "metrics.jsonl").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=rf"metrics.jsonl:{len(training_log()) + 1}: malformed JSON line"):
        load_run(run)


def test_compare_runs(tmp_path: Path) -> None:
    a = make_run(tmp_path, "fin")
    b = make_run(tmp_path, "sql", sql=True)
    c = make_run(tmp_path, "pending", evaluated=False)
    table = compare_runs([a, b, c]).splitlines()
    assert table[0].startswith("| Run | Model | Task | Train rows | Eval examples | ROUGE-L (LoRA / Base) |")
    assert "Execution accuracy (LoRA / Base)" in table[0]
    assert table[2] == ("| fin | flan-t5-large | finance-qa | 1,800 | 20 | 0.4000 / 0.1800 (+0.2200) "
                        "| 0.2500 / 0.0500 (+0.2000) | n/a | 0.8300 |")
    assert "| 0.6000 / 0.3000 (+0.3000) |" in table[3]
    assert table[4].startswith("| pending | flan-t5-large | finance-qa | 1,800 | n/a | n/a | n/a | n/a |")
    assert "Execution" not in compare_runs([a])


def test_compare_runs_rejects_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    a = make_run(tmp_path, "fin")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("hi", encoding="utf-8")
    with pytest.raises(RunDirError, match="notes: not a run directory"):
        compare_runs([a, other])
    with pytest.raises(LoratuneError, match="no run directories"):
        compare_runs([])
