"""The `loratune` command: exit codes and one-line errors, and real end-to-end runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loratune.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_unknown_config_key_is_one_line_error(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: x\ntrain:\n  epochz: 3\n")
    code, _, err = run_cli(capsys, "train", str(cfg))
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "train.epochz" in err and str(cfg) in err and "Traceback" not in err


def test_wrong_type_via_set(capsys):
    code, _, err = run_cli(capsys, "train", str(ROOT / "configs/text2sql-smollm2.yaml"), "--set", "lora.r=big")
    assert code == 2 and "lora.r: expected an integer, got 'big'" in err


def test_missing_data_file(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"task: sql-create-context\noutput_dir: {tmp_path}/runs\ndata:\n  train: {tmp_path}/nope.jsonl\n")
    code, _, err = run_cli(capsys, "data", str(cfg))
    assert code == 1 and "nope.jsonl: data file not found" in err


def test_missing_model_file(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps({"prompt": "c", "completion": "d"}) + "\n")
    cfg.write_text(f"model: {tmp_path}/missing.gguf\ndata:\n  train: {data}\n")
    code, _, err = run_cli(capsys, "data", str(cfg))
    assert code == 1 and "missing.gguf" in err and "Traceback" not in err


def test_eval_and_report_of_missing_run(capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "nope"))
    assert code == 1 and "nope: run directory not found" in err
    code, _, err = run_cli(capsys, "compare", str(tmp_path / "nope"))
    assert code == 1 and "nope" in err


def test_models_lists_builtin(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "smollm2-135m-instruct" in out


def test_python_dash_m_help():
    out = subprocess.run([sys.executable, "-m", "loratune", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "run", "eval", "report", "compare", "data", "models", "merge", "sql-eval", "serve", "chat"):
        assert command in out.stdout


def test_train_eval_report_compare_merge_on_tiny_model(capsys, tmp_path, tiny_t5_dir):
    data = tmp_path / "fin.jsonl"
    rows = [{"instruction": f"What is {w}?", "input": "", "output": f"{w} is money."} for w in
            ("a bond", "a stock", "cash", "a loan", "a fee", "a tax")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 3))
    cfg = tmp_path / "fin.yaml"
    cfg.write_text(
        f"name: fin\nmodel: {tiny_t5_dir}\ntask: finance-alpaca\noutput_dir: {tmp_path}/runs\n"
        f"data:\n  train: {data}\n  eval_fraction: 0.2\ntrain:\n  max_steps: 6\n  batch_size: 4\n  lr: 0.01\n"
        "eval:\n  generation:\n    max_new_tokens: 16\n"
    )
    code, out, err = run_cli(capsys, "run", str(cfg))
    assert code == 0, err
    assert "Training data shape: (14, 2)" in out and "Test data shape: (4, 2)" in out
    assert "Trainable parameters" in out and "Memory footprint of" in out
    assert "|| Rouge-1 | Rouge-2 | Rouge-L | Rouge-Lsum |" in out
    run_dir = tmp_path / "runs" / "fin"
    assert (run_dir / "report.html").is_file() and (run_dir / "plots" / "train_loss.png").is_file()
    # a second run with the same name is refused, and nothing is lost
    code, _, err = run_cli(capsys, "run", str(cfg))
    assert code == 1 and "--overwrite" in err and (run_dir / "report.html").is_file()
    code, _, _ = run_cli(capsys, "run", str(cfg), "--set", "name=fin2")
    assert code == 0
    code, out, _ = run_cli(capsys, "compare", str(run_dir), str(tmp_path / "runs" / "fin2"))
    assert code == 0 and "fin2" in out
    code, out, _ = run_cli(capsys, "merge", str(run_dir), "--output", str(tmp_path / "merged"))
    assert code == 0 and (tmp_path / "merged" / "model.safetensors").is_file()


@pytest.mark.slow
def test_real_default_model_trains_a_few_steps(tmp_path):
    """The shipped demo config on the real SmolLM2, cut to a few steps, through the installed CLI."""
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "loratune", "train", str(ROOT / "configs/text2sql-smollm2.yaml"),
           "--set", "train.max_steps=3", "--set", "train.eval_steps=3", "--set", "train.eval_loss_rows=8",
           "--set", "train.batch_size=4", "--set", f"output_dir={tmp_path}", "--set", "name=smoke"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Trainable parameters 4,884,480 || All parameters 139,399,488" in proc.stdout
    summary = json.loads((tmp_path / "smoke" / "run_summary.json").read_text())
    assert summary["steps"] == 3 and summary["model"] == "smollm2-135m-instruct"
    assert (tmp_path / "smoke" / "adapter" / "adapter_model.safetensors").is_file()
